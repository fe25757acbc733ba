"""The engine end to end in one process: real Postgres, real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import psycopg
import pytest

from carinho_outbox import signing
from carinho_outbox.records import Outcome, SendResult
from carinho_outbox.settings import HTTP_DESTINATIONS
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, ingest, running_worker
from tests.support.receiver import Receiver, Reply
from tests.support.samples import (
    EXPECTED_DESTINATIONS,
    PAYLOADS,
    SOURCE_FOR,
    all_destinations,
)


def dest_env(receiver: Receiver, names: tuple[str, ...] = HTTP_DESTINATIONS) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in names:
        env[f"DEST_{name.upper()}_URL"] = receiver.url(f"/{name}")
        env[f"DEST_{name.upper()}_SECRET"] = f"secret-{name}"
        env[f"DEST_{name.upper()}_TOKEN"] = f"token-{name}"
    return env


def statuses(db: psycopg.Connection) -> dict[str, int]:
    return dict(db.execute("select status, count(*) from deliveries group by status").fetchall())


async def test_every_event_type_fans_out_to_exactly_its_destinations_with_valid_signatures(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**dest_env(receiver))
    expected: dict[str, set[str]] = {}
    for event_type, payload in PAYLOADS.items():
        event_id, destinations, dup = await ingest(
            store, event_type, payload, SOURCE_FOR[event_type]
        )
        assert not dup
        # Exactly the catalog's HTTP destinations, plus the automations' channel deliveries
        # (held here: no Z-API or SMTP is configured in this test).
        assert set(destinations) == all_destinations(event_type)
        expected[str(event_id)] = EXPECTED_DESTINATIONS[event_type]
    total = sum(len(v) for v in expected.values())
    async with running_worker(settings, store, dsn):
        await asyncio.to_thread(receiver.wait_for, total)
        await eventually(lambda: statuses(db).get("delivered") == total)

    got: dict[str, set[str]] = {}
    for req in receiver.requests:
        dest = req.path.strip("/")
        body = req.json
        # The signature covers the exact bytes received, with that destination's secret.
        signing.verify(
            f"secret-{dest}",
            req.headers["webhook-id"],
            req.headers["webhook-timestamp"],
            req.headers["webhook-signature"],
            req.body,
        )
        with pytest.raises(signing.SignatureError):
            signing.verify(
                "wrong",
                req.headers["webhook-id"],
                req.headers["webhook-timestamp"],
                req.headers["webhook-signature"],
                req.body,
            )
        assert req.headers["authorization"] == f"Bearer token-{dest}"
        assert set(body) == {"id", "type", "source", "occurred_at", "data"}
        got.setdefault(body["id"], set()).add(dest)
    assert got == expected
    assert len(receiver.requests) == total  # none twice


async def test_retryable_then_success_on_attempt_three_with_growing_delays(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = lambda _r, n: Reply(status=503 if n <= 2 else 200)
    settings = make_settings(**dest_env(receiver, ("crm",)), RETRY_BASE_S="0.2")
    await ingest(store, "invoice.created", PAYLOADS["invoice.created"], "financeiro")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db).get("delivered") == 1)
    row = db.execute("select attempts, status, last_status from deliveries").fetchone()
    assert row == (3, "delivered", 200)
    attempts = db.execute(
        "select attempt, outcome, response_status from webhook_deliveries order by attempt"
    ).fetchall()
    assert attempts == [(1, "retry", 503), (2, "retry", 503), (3, "delivered", 200)]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    # Equal jitter: the first retry waits 0.1-0.2 s, the second 0.2-0.4 s.
    assert gaps[0] >= 0.09
    assert gaps[1] >= 0.19
    assert gaps[1] > gaps[0] * 0.99


async def test_permanent_4xx_is_dead_lettered_on_attempt_one_with_response_kept(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = lambda _r, _n: Reply(status=400, body='{"erro":"cliente inexistente"}')
    settings = make_settings(**dest_env(receiver, ("crm",)))
    await ingest(store, "invoice.created", PAYLOADS["invoice.created"], "financeiro")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db).get("dead") == 1)
    row = db.execute(
        "select attempts, last_status, last_response, event_type, destination from dead_letter"
    ).fetchone()
    assert row == (1, 400, '{"erro":"cliente inexistente"}', "invoice.created", "crm")
    assert len(receiver.requests) == 1


async def test_retry_after_is_honoured(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = lambda _r, n: (
        Reply(status=429, headers={"Retry-After": "1"}) if n == 1 else Reply()
    )
    settings = make_settings(**dest_env(receiver, ("crm",)), RETRY_BASE_S="0.05")
    await ingest(store, "invoice.created", PAYLOADS["invoice.created"], "financeiro")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db).get("delivered") == 1)
    first, second = receiver.requests
    assert second.at - first.at >= 0.95


async def test_max_attempts_moves_to_dead_letter(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = lambda _r, _n: Reply(status=500)
    settings = make_settings(
        **dest_env(receiver, ("crm",)), DEST_CRM_MAX_ATTEMPTS="3", RETRY_BASE_S="0.02"
    )
    await ingest(store, "invoice.created", PAYLOADS["invoice.created"], "financeiro")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db).get("dead") == 1)
    assert db.execute("select attempts, last_error from deliveries").fetchone() == (3, "HTTP 500")
    assert len(receiver.requests) == 3


async def test_unconfigured_destination_holds_without_spending_attempts(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**dest_env(receiver, ("crm",)))  # marketing not configured
    await ingest(store, "lead.created", PAYLOADS["lead.created"], "site")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db).get("delivered") == 1)
        await asyncio.sleep(0.5)
    row = db.execute(
        "select status, attempts from deliveries where destination = 'marketing'"
    ).fetchone()
    assert row == ("pending", 0)
    assert [r.path for r in receiver.requests] == ["/crm"]


async def test_delayed_delivery_runs_on_time(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**dest_env(receiver, ("crm",)))
    async with running_worker(settings, store, dsn):
        t0 = datetime.now(UTC).timestamp()
        await ingest(
            store, "invoice.created", PAYLOADS["invoice.created"], "financeiro", extra_delay_s=1.0
        )
        await asyncio.to_thread(receiver.wait_for, 1, 10)
    waited = receiver.requests[0].at - t0
    # Not before it is due, and within one poll interval (0.2 s) plus slack after.
    assert 0.95 <= waited <= 1.0 + 0.2 + 0.5


async def test_notify_wakes_an_idle_worker_fast(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**dest_env(receiver, ("crm",)), POLL_INTERVAL_S="30")
    async with running_worker(settings, store, dsn):
        await asyncio.sleep(0.3)  # idle: the next poll is 30 s away, only NOTIFY can wake it
        t0 = datetime.now(UTC).timestamp()
        await ingest(store, "invoice.created", PAYLOADS["invoice.created"], "financeiro")
        await asyncio.to_thread(receiver.wait_for, 1, 5)
    assert receiver.requests[0].at - t0 < 2.0


async def test_late_finisher_cannot_overwrite_a_newer_attempt(
    dsn: str, store: Store, db: psycopg.Connection
) -> None:
    """Worker A claims, stalls past its lease; the row is rescued and worker B claims it and
    delivers. A's late 'dead' must not overwrite B's 'delivered'."""
    await ingest(store, "invoice.created", PAYLOADS["invoice.created"], "financeiro")
    [job_a] = await store.claim(
        worker="A", destinations=["crm"], queues=["default"], limit=10, lease_s=30
    )
    db.execute("update deliveries set locked_until = now() - interval '1 second'")
    rescued = await store.rescue_expired(worker="B", default_max_attempts=5)
    assert [r["status"] for r in rescued] == ["pending"]
    [job_b] = await store.claim(
        worker="B", destinations=["crm"], queues=["default"], limit=10, lease_s=30
    )
    assert (job_a.id, job_a.attempt, job_b.attempt) == (job_b.id, 1, 2)
    kept = await store.record_outcomes(
        worker="B", outcomes=[Outcome(job_b, "delivered", SendResult(ok=True, http_status=200))]
    )
    assert kept == {job_b.id}
    kept = await store.record_outcomes(
        worker="A",
        outcomes=[Outcome(job_a, "dead", SendResult(ok=False, permanent=True, http_status=400))],
    )
    assert kept == set()
    assert db.execute("select status, attempts, last_status from deliveries").fetchone() == (
        "delivered",
        2,
        200,
    )
    rows = db.execute(
        "select attempt, outcome, lease_lost from webhook_deliveries order by id"
    ).fetchall()
    assert rows == [(1, "lease_expired", False), (2, "delivered", False), (1, "dead", True)]

    # The same worker re-claiming (attempt fence, not only the worker id).
    await ingest(store, "payment.failed", PAYLOADS["payment.failed"], "financeiro")
    [job1] = await store.claim(
        worker="A", destinations=["crm"], queues=["critical"], limit=10, lease_s=30
    )
    db.execute(
        "update deliveries set locked_until = now() - interval '1 second' where id = %s", (job1.id,)
    )
    await store.rescue_expired(worker="A", default_max_attempts=5)
    [job2] = await store.claim(
        worker="A", destinations=["crm"], queues=["critical"], limit=10, lease_s=30
    )
    assert (
        await store.record_outcomes(
            worker="A", outcomes=[Outcome(job1, "delivered", SendResult(ok=True))]
        )
        == set()
    )
    assert await store.record_outcomes(
        worker="A", outcomes=[Outcome(job2, "delivered", SendResult(ok=True))]
    ) == {job2.id}


async def test_claim_takes_priority_order_and_skips_locked_rows(
    dsn: str, store: Store, db: psycopg.Connection
) -> None:
    await ingest(store, "lead.created", PAYLOADS["lead.created"], "site")  # crm 50, marketing 200
    await ingest(
        store, "service.cancelled", PAYLOADS["service.cancelled"], "operacao"
    )  # 20, 20, 50
    first = await store.claim(
        worker="A",
        destinations=list(HTTP_DESTINATIONS),
        queues=["critical", "default", "low"],
        limit=2,
        lease_s=30,
    )
    assert [j.type for j in first] == ["service.cancelled", "service.cancelled"]
    second = await store.claim(
        worker="B",
        destinations=list(HTTP_DESTINATIONS),
        queues=["critical", "default", "low"],
        limit=10,
        lease_s=30,
    )
    # Priority 50 ties are served oldest first; marketing (200) comes last.
    assert [(j.type, j.destination) for j in second] == [
        ("lead.created", "crm"),
        ("service.cancelled", "financeiro"),
        ("lead.created", "marketing"),
    ]
    assert not {j.id for j in first} & {j.id for j in second}
    only_low = await store.claim(
        worker="C", destinations=list(HTTP_DESTINATIONS), queues=["low"], limit=10, lease_s=30
    )
    assert only_low == []


async def test_graceful_stop_releases_unfinished_work_and_refunds_the_attempt(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = lambda _r, _n: Reply(delay_s=5)
    settings = make_settings(
        **dest_env(receiver, ("crm",)), SHUTDOWN_GRACE_S="0.5", REQUEST_TIMEOUT_S="8", LEASE_S="20"
    )
    await ingest(store, "invoice.created", PAYLOADS["invoice.created"], "financeiro")
    async with running_worker(settings, store, dsn):
        await asyncio.to_thread(receiver.wait_for, 1, 5)
    row = db.execute("select status, attempts, locked_by from deliveries").fetchone()
    assert row == ("pending", 0, None)
    assert db.execute("select count(*) from workers").fetchone() == (0,)
    outcomes = [r[0] for r in db.execute("select outcome from webhook_deliveries")]
    assert outcomes == ["released"]


async def test_worker_registers_and_heartbeats(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**dest_env(receiver, ("crm",)))
    async with running_worker(settings, store, dsn) as worker:
        first = db.execute(
            "select last_seen_at from workers where id = %s", (worker.id,)
        ).fetchone()
        await asyncio.sleep(1.2)
        row = db.execute(
            "select host, pid, queues, last_seen_at from workers where id = %s", (worker.id,)
        ).fetchone()
        assert row is not None and first is not None
        assert row[2] == ["critical", "default", "low"]
        assert row[3] > first[0]
        alive = await store.list_workers(alive_within_s=5)
        assert [w["id"] for w in alive if w["alive"]] == [worker.id]


async def test_payload_is_sent_as_stored(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**dest_env(receiver, ("cuidadores",)))
    event_id, _, _ = await ingest(
        store, "payout.processed", PAYLOADS["payout.processed"], "financeiro"
    )
    async with running_worker(settings, store, dsn):
        [req] = await asyncio.to_thread(receiver.wait_for, 1)
    body = json.loads(req.body)
    assert body["id"] == str(event_id)
    assert body["type"] == "payout.processed" and body["source"] == "financeiro"
    assert body["data"]["amount_cents"] == 90000
    assert (
        req.headers["webhook-id"] == f"dlv_{db.execute('select id from deliveries').fetchone()[0]}"
    )


async def test_dead_letter_reprocess_and_archive_transitions(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    """dead → pending (reprocess, full attempt budget, history kept) and dead → archived."""
    fail = {"on": True}
    receiver.script = lambda _r, _n: Reply(status=422 if fail["on"] else 200)
    settings = make_settings(**dest_env(receiver, ("crm",)))
    await ingest(store, "invoice.created", PAYLOADS["invoice.created"], "financeiro")
    await ingest(store, "payment.failed", PAYLOADS["payment.failed"], "financeiro")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db).get("dead") == 2)
        assert db.execute("select count(*) from dead_letter where status = 'dead'").fetchone() == (
            2,
        )
        fail["on"] = False
        inv_id = db.execute(
            "select id from dead_letter where event_type = 'invoice.created'"
        ).fetchone()[0]
        rows = await store.reprocess_dead(ids=[inv_id])
        assert [r["id"] for r in rows] == [inv_id]
        await eventually(lambda: statuses(db).get("delivered") == 1)
    assert db.execute(
        "select attempts, reprocessed, status from deliveries where id = %s", (inv_id,)
    ).fetchone() == (1, 1, "delivered")
    outcomes = [
        r[0]
        for r in db.execute(
            "select outcome from webhook_deliveries where delivery_id = %s order by id", (inv_id,)
        )
    ]
    assert outcomes == ["dead", "delivered"]
    assert await store.reprocess_dead(ids=[inv_id]) == []  # not dead any more: no-op
    archived = await store.archive_dead(ids=[r[0] for r in db.execute("select id from deliveries")])
    assert len(archived) == 1
    assert statuses(db) == {"delivered": 1, "archived": 1}
    assert db.execute("select count(*) from dead_letter where status = 'dead'").fetchone() == (0,)
