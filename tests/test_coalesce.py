"""Concurrent POST /events written together (coalesce.py): fewer statements than events, each
request still answered with its own event, request id, duplicate flag or error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from carinho_outbox import store as store_module
from carinho_outbox.cli import create_key
from carinho_outbox.coalesce import Coalescer
from carinho_outbox.web.app import create_app
from tests.conftest import make_settings
from tests.support.samples import PAYLOADS
from tests.support.web import bearer, make_key

EVENT_TYPE = "payment.received"


def event(n: int, **extra: Any) -> dict[str, Any]:
    payload = {**PAYLOADS[EVENT_TYPE], "note": f"item {n}"}
    return {"type": EVENT_TYPE, "payload": payload, **extra}


def group_metric() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("carinho_ingest_group_events_count") or 0.0
    total = REGISTRY.get_sample_value("carinho_ingest_group_events_sum") or 0.0
    return count, total


@pytest.fixture
def key(dsn: str) -> str:
    return make_key(dsn, "finance", ["financeiro"])


@asynccontextmanager
async def app_client(dsn: str, **env: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(make_settings(**env), dsn)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as c:
            yield c, app.state.hub


async def post_all(c: httpx.AsyncClient, key: str, bodies: list[dict[str, Any]]) -> list[Any]:
    async def one(n: int, body: dict[str, Any]) -> httpx.Response:
        headers = {**bearer(key), "X-Request-Id": f"req-{n}"}
        return await c.post("/events", headers=headers, json=body)

    return await asyncio.gather(*(one(n, b) for n, b in enumerate(bodies)))


async def test_concurrent_events_share_statements(
    dsn: str, key: str, db: psycopg.Connection
) -> None:
    before = group_metric()
    async with app_client(dsn, INGEST_GROUP_MAX="50") as (c, hub):
        answers = await post_all(c, key, [event(n) for n in range(60)])
        runs, items = hub.ingress.group.runs, hub.ingress.group.items
    after = group_metric()
    assert [r.status_code for r in answers] == [202] * 60
    ids = [r.json()["event_id"] for r in answers]
    assert len(set(ids)) == 60
    assert all(r.json()["deliveries"] == ["crm", "operacao"] for r in answers)
    # Every event stored with its own request's id, client and payload.
    rows = db.execute(
        "select id::text, request_id, client, payload->>'note' from events order by received_at"
    ).fetchall()
    by_id = {r[0]: r[1:] for r in rows}
    for n, event_id in enumerate(ids):
        assert by_id[event_id] == (f"req-{n}", "finance", f"item {n}")
    deliveries = db.execute("select count(*) from deliveries").fetchone()
    assert deliveries is not None and deliveries[0] == 120
    # Fewer statements than events: the concurrent requests were carried together, and
    # carinho_ingest_group_events shows it (one observation per statement, its events).
    assert items == 60
    assert runs < 60, runs
    assert (after[0] - before[0], after[1] - before[1]) == (runs, 60)


async def test_duplicate_keys_in_one_group_answer_the_first_event(
    dsn: str, key: str, db: psycopg.Connection
) -> None:
    bodies = [event(n, idempotency_key="pay-42") for n in range(6)]
    async with app_client(dsn) as (c, _hub):
        answers = await post_all(c, key, bodies)
        again = await c.post(
            "/events", headers=bearer(key), json=event(9, idempotency_key="pay-42")
        )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 5 + [202]
    assert len({r.json()["event_id"] for r in answers}) == 1
    assert again.status_code == 200 and again.json()["event_id"] == answers[0].json()["event_id"]
    count = db.execute("select count(*) from events").fetchone()
    assert count is not None and count[0] == 1


async def test_a_poison_item_fails_alone(dsn: str, key: str, db: psycopg.Connection) -> None:
    # A row Postgres refuses after validation passed (here a trigger of the test's own): the
    # group's statement rolls back, every item is retried alone, only the bad one fails.
    db.execute(
        """
        create function refuse_poison() returns trigger language plpgsql as $$
        begin
            if new.payload->>'note' = 'poison' then
                raise exception 'poison payload' using errcode = '22000';
            end if;
            return new;
        end $$;
        create trigger refuse_poison before insert on events
            for each row execute function refuse_poison();
        """
    )
    bodies = [event(n) for n in range(20)]
    bodies[7]["payload"]["note"] = "poison"
    async with app_client(dsn) as (c, hub):
        answers = await post_all(c, key, bodies)
        runs = hub.ingress.group.runs
    statuses = [r.status_code for r in answers]
    assert statuses[7] == 422 and answers[7].json()["error"]["code"] == "invalid_value"
    assert statuses[:7] + statuses[8:] == [202] * 19
    notes = {r[0] for r in db.execute("select payload->>'note' from events").fetchall()}
    assert notes == {f"item {n}" for n in range(20) if n != 7}
    assert runs < 20


async def test_group_max_one_writes_each_event_alone(
    dsn: str, key: str, db: psycopg.Connection
) -> None:
    async with app_client(dsn, INGEST_GROUP_MAX="1") as (c, hub):
        assert hub.ingress.group is None
        answers = await post_all(c, key, [event(n) for n in range(10)])
    assert [r.status_code for r in answers] == [202] * 10
    count = db.execute("select count(*) from deliveries").fetchone()
    assert count is not None and count[0] == 20


# --- the coalescer itself ------------------------------------------------------------------


class Recorder:
    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.groups: list[list[int]] = []
        self.singles: list[int] = []

    async def run(self, items: list[int]) -> list[int]:
        self.groups.append(list(items))
        await asyncio.sleep(self.delay_s)
        return [i * 10 for i in items]

    async def single(self, item: int) -> int:
        self.singles.append(item)
        await asyncio.sleep(self.delay_s)
        return item * 10


async def test_light_load_runs_alone_and_heavy_load_groups() -> None:
    rec = Recorder()
    co: Coalescer[int, int] = Coalescer(rec.run, rec.single, max_items=4, max_inflight=1)
    assert await co.submit(1) == 10
    assert rec.singles == [1] and rec.groups == []
    results = await asyncio.gather(*(co.submit(i) for i in range(2, 12)))
    assert results == [i * 10 for i in range(2, 12)]
    # The first ran at once, alone. The ten gathered calls all queued before the next run
    # could start, and went in runs of at most max_items, in arrival order.
    assert rec.singles == [1]
    assert rec.groups == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11]]
    assert (co.runs, co.items) == (4, 11)


async def test_a_caller_cancelled_while_queued_is_left_out() -> None:
    rec = Recorder(delay_s=0.05)
    co: Coalescer[int, int] = Coalescer(rec.run, rec.single, max_items=10, max_inflight=1)
    first = asyncio.create_task(co.submit(1))
    await asyncio.sleep(0)  # 1 is in flight
    queued = [asyncio.create_task(co.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    queued[1].cancel()  # item 3's caller gives up before its run starts
    assert await first == 10
    assert await queued[0] == 20 and await queued[2] == 40
    with pytest.raises(asyncio.CancelledError):
        await queued[1]
    assert rec.groups == [[2, 4]]


async def test_a_connection_error_fails_the_whole_group_without_retry() -> None:
    # A lost connection may have committed: retrying items alone could write them twice.
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        raise psycopg.OperationalError("connection lost")

    async def single(item: int) -> int:
        calls.append([item])
        await asyncio.sleep(0.01)
        return item

    co: Coalescer[int, int] = Coalescer(run, single, max_items=10, max_inflight=1)
    outcomes = await asyncio.gather(*(co.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, psycopg.OperationalError) for o in outcomes)
    assert calls == [[0, 1, 2, 3, 4]]


# --- the rate limiter's takes ---------------------------------------------------------------


@pytest.fixture
def count_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    real_q = store_module.q

    def counting_q(name: str) -> Any:
        names.append(name)
        return real_q(name)

    monkeypatch.setattr(store_module, "q", counting_q)
    return names


@pytest.mark.parametrize(("burst", "accepted"), [(1000, 40), (10, 10), (0, 0)])
async def test_concurrent_takes_share_statements_and_never_exceed_the_bucket(
    dsn: str, db: psycopg.Connection, count_statements: list[str], burst: int, accepted: int
) -> None:
    # burst 0 here means a bucket emptied beforehand (a key's burst 0 switches the limit off).
    async with app_client(dsn) as (c, hub):
        limited = await create_key(
            hub.store,
            name="busy",
            sources=["financeiro"],
            admin=False,
            rate_per_s=0.001,
            burst=max(burst, 5),
        )
        if burst == 0:
            drained = await post_all(c, limited, [event(n) for n in range(5)])
            assert [r.status_code for r in drained] == [202] * 5
        count_statements.clear()
        answers = await post_all(c, limited, [event(n) for n in range(40)])
        assert hub.limiter._takes == {}  # no coalescer outlives its burst
    codes = [r.status_code for r in answers]
    assert sorted(codes) == [202] * accepted + [429] * (40 - accepted)
    takes = count_statements.count("take_token")
    assert 1 <= takes < 40, takes
    # The bucket holds what the accepted requests left (the refill at 0.001/s adds < 0.1).
    tokens = db.execute("select tokens from rate_limits where bucket = 'key:busy'").fetchone()
    assert tokens is not None
    assert max(burst, 5) - (accepted + (5 if burst == 0 else 0)) == pytest.approx(
        tokens[0], abs=0.1
    )
    remaining = [int(r.headers["RateLimit-Remaining"]) for r in answers if r.status_code == 202]
    assert min(remaining, default=0) == max(0, burst - accepted)
    refused = [r for r in answers if r.status_code == 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
