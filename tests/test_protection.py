"""Per-destination protection in table state: circuit breakers, in-flight caps, rate limits,
isolation of a down destination, per-key ordering, and priority without starvation."""

from __future__ import annotations

import asyncio
import time

import psycopg

from carinho_outbox.ingress import Ingress
from carinho_outbox.ops import health_report, status_report
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, ingest, running_worker
from tests.support.receiver import Receiver, Reply
from tests.support.samples import PAYLOADS
from tests.test_engine import dest_env, statuses


def by_dest(db: psycopg.Connection, status: str) -> dict[str, int]:
    return dict(db.execute(
        "select destination, count(*) from deliveries where status = %s group by destination",
        (status,)).fetchall())


async def test_circuit_opens_pauses_without_spending_attempts_probes_and_closes(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    healthy = {"on": False}
    receiver.script = lambda r, _n: Reply(
        status=200 if healthy["on"] or r.path == "/operacao" else 503)
    settings = make_settings(**dest_env(receiver, ("crm", "operacao")), BREAKER_THRESHOLD="3",
                             BREAKER_PAUSE_S="1.5", RETRY_BASE_S="0.05", RETRY_CAP_S="0.1",
                             MAX_ATTEMPTS="50", WORKER_CONCURRENCY="1")
    for i in range(6):
        await ingest(store, "client.updated", {"client_id": f"c-{i}", "changes": {"x": i}}, "crm")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: db.execute(
            "select state from destination_state where destination = 'crm'").fetchone()
            == ("open",))
        crm_calls_at_open = sum(1 for r in receiver.requests if r.path == "/crm")
        report = await status_report(store, settings, {"crm", "operacao"})
        assert report["circuits"]["crm"] in ("open", "half_open")
        _, health = await health_report(store, settings, {"crm", "operacao"})
        assert health["destinations"]["crm"]["circuit"] in ("open", "half_open")
        attempts_at_open = db.execute(
            "select sum(attempts) from deliveries where destination = 'crm'").fetchone()[0]
        await asyncio.sleep(1.0)  # inside the pause: nothing is sent, no attempt is spent
        assert sum(1 for r in receiver.requests if r.path == "/crm") == crm_calls_at_open
        assert db.execute("select sum(attempts) from deliveries where destination = 'crm'"
                          ).fetchone()[0] == attempts_at_open
        # The healthy destination kept flowing during the outage.
        assert by_dest(db, "delivered").get("operacao") == 6
        healthy["on"] = True
        await eventually(lambda: by_dest(db, "delivered").get("crm") == 6, timeout_s=20)
    assert crm_calls_at_open >= 3
    row = db.execute("select state, consecutive_failures, last_success_at is not null "
                     "from destination_state where destination = 'crm'").fetchone()
    assert row == ("closed", 0, True)


async def test_in_flight_cap_holds_across_workers(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = lambda _r, _n: Reply(delay_s=0.2)
    settings = make_settings(**dest_env(receiver, ("crm",)), DEST_CRM_MAX_IN_FLIGHT="2",
                             POLL_INTERVAL_S="0.05")
    for i in range(12):
        await ingest(store, "client.updated", {"client_id": f"c-{i}", "changes": {"x": i}}, "crm")
    async with running_worker(settings, store, dsn), running_worker(settings, store, dsn), \
            running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db).get("delivered") == 12, timeout_s=30)
    assert receiver.max_in_flight == 2


async def test_rate_limit_holds(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**dest_env(receiver, ("crm",)), DEST_CRM_RATE_PER_S="5",
                             POLL_INTERVAL_S="0.05")
    for i in range(15):
        await ingest(store, "client.updated", {"client_id": f"c-{i}", "changes": {"x": i}}, "crm")
    async with running_worker(settings, store, dsn), running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db).get("delivered") == 15, timeout_s=30)
    times = sorted(r.at for r in receiver.requests)
    # A burst of 5, then 10 more at 5 per second: at least ~2 s from first to last.
    assert times[-1] - times[0] >= 1.8
    # No 1-second window holds more than burst + rate.
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 10


async def test_down_destination_with_thousands_waiting_does_not_slow_the_others(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    # 5,000 crm deliveries older than everything else, crm's circuit open.
    db.execute("""
        with ev as (
            insert into events (type, source, payload)
            select 'client.updated', 'crm', jsonb_build_object('client_id', 'c-' || g)
            from generate_series(1, 5000) g returning id)
        insert into deliveries (event_id, destination, priority, available_at)
        select id, 'crm', 10, now() - interval '1 hour' from ev""")
    db.execute("insert into destination_state (destination, state, paused_until) "
               "values ('crm', 'open', now() + interval '1 hour')")
    settings = make_settings(**dest_env(receiver, ("crm", "operacao")))
    for i in range(200):
        await ingest(store, "service.started",
                     {"service_id": f"s-{i}", "started_at": "2026-12-01T08:00:00-03:00"},
                     "operacao")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: by_dest(db, "delivered").get("operacao") == 200, timeout_s=30)
        # The paused destination's rows were taken out of the claim index.
        await eventually(lambda: db.execute(
            "select count(*) from deliveries where destination='crm' and due").fetchone() == (0,))
        plan = "\n".join(r[0] for r in db.execute(
            "explain (analyze, costs off) select id from deliveries "
            "where status = 'pending' and due and available_at <= now() "
            "and destination = any('{operacao}') order by priority, available_at, id limit 50"))
    assert "Rows Removed by Filter: 5" not in plan  # crm rows are not scanned at all
    assert not any(r.path == "/crm" for r in receiver.requests)
    assert db.execute("select max(attempts) from deliveries where destination = 'crm'"
                      ).fetchone() == (0,)


async def test_per_key_ordering_with_a_failing_head_and_several_workers(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    failed_once: set[str] = set()

    def script(r, _n):  # type: ignore[no-untyped-def]
        body = r.json
        key = body["data"]["client_id"]
        if (r.path == "/crm" and key == "c-1" and body["type"] == "client.registered"
                and key not in failed_once):
            failed_once.add(key)
            return Reply(status=503)
        return Reply()

    receiver.script = script
    settings = make_settings(**dest_env(receiver, ("crm", "financeiro", "marketing")),
                             RETRY_BASE_S="1.0", RETRY_CAP_S="1.0")
    ingress = Ingress(store)  # the ingress derives the ordering key (client_id)
    for n in range(3):
        for key in ("c-1", "c-2", "c-3"):
            if n == 0:
                await ingress.accept(
                    event_type="client.registered", key_sources=("crm",), source=None,
                    client="t", payload={"client_id": key, "name": "X",
                                         "email": f"{key}@example.com"})
            else:
                await ingress.accept(
                    event_type="client.updated", key_sources=("crm",), source=None, client="t",
                    payload={"client_id": key, "changes": {"n": n}})
    async with running_worker(settings, store, dsn), running_worker(settings, store, dsn):
        await eventually(lambda: by_dest(db, "delivered").get("crm") == 9, timeout_s=30)
    crm = [r for r in receiver.requests if r.path == "/crm" and r.json["data"]["client_id"]]
    for key in ("c-1", "c-2", "c-3"):
        seq = [(r.json["type"], r.json["data"].get("changes", {}).get("n")) for r in crm
               if r.json["data"]["client_id"] == key]
        expected = [("client.registered", None), ("client.updated", 1), ("client.updated", 2)]
        if key == "c-1":
            expected = [expected[0], *expected]  # the failed head, retried, then the rest
        assert seq == expected, (key, seq)
    c1_done = max(r.at for r in crm if r.json["data"]["client_id"] == "c-1")
    c2_done = max(r.at for r in crm if r.json["data"]["client_id"] == "c-2")
    assert c2_done < c1_done  # other keys did not wait for the failing head


async def test_ingress_assigns_ordering_keys(
    dsn: str, store: Store, db: psycopg.Connection
) -> None:
    ingress = Ingress(store)
    await ingress.accept(event_type="client.registered", payload=PAYLOADS["client.registered"],
                         key_sources=("crm",), source=None, client="t")
    await ingress.accept(event_type="client.updated", payload=PAYLOADS["client.updated"],
                         key_sources=("crm",), source=None, client="t")
    rows = db.execute("select destination, ordering_key, due from deliveries "
                      "where destination = 'crm' order by id").fetchall()
    assert rows == [("crm", "client_id:c-1", True), ("crm", "client_id:c-1", False)]


async def test_low_priority_is_not_starved_by_a_flood(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = lambda _r, _n: Reply(delay_s=0.05)
    settings = make_settings(**dest_env(receiver, ("crm", "marketing")), MAX_WAIT_S="0.5",
                             WORKER_CONCURRENCY="4", WORKER_BATCH_SIZE="4")
    await ingest(store, "lead.created", PAYLOADS["lead.created"], "site")  # marketing: prio 200
    db.execute("""
        with ev as (
            insert into events (type, source, payload)
            select 'service.cancelled', 'operacao', jsonb_build_object('service_id', 's-' || g)
            from generate_series(1, 600) g returning id)
        insert into deliveries (event_id, destination, priority) select id, 'crm', 20 from ev""")
    await asyncio.sleep(0.6)  # the marketing row is now older than MAX_WAIT_S
    started = time.monotonic()
    async with running_worker(settings, store, dsn):
        await eventually(lambda: by_dest(db, "delivered").get("marketing") == 1, timeout_s=20)
        still_pending = by_dest(db, "pending").get("crm", 0)
    assert still_pending > 300, "marketing had to wait for the whole flood"
    assert time.monotonic() - started < 5
