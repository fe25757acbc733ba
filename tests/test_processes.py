"""The engine across real worker processes: no loss, no duplicates, crash recovery."""

from __future__ import annotations

import collections
from pathlib import Path

import psycopg

from tests.support.procs import start_worker, wait_until
from tests.support.receiver import Receiver


def bulk_events(db: psycopg.Connection, n: int) -> None:
    """n invoice.created events, one crm delivery each (setup only; ingress is tested elsewhere)."""
    db.execute(
        """
        with ev as (
            insert into events (type, source, payload)
            select 'invoice.created', 'financeiro',
                   jsonb_build_object('invoice_id', 'i-' || g, 'client_id', 'c-1',
                                      'amount_cents', g, 'due_date', '2026-12-10')
            from generate_series(1, %s) g
            returning id
        )
        insert into deliveries (event_id, destination, queue, priority)
        select id, 'crm', 'default', 100 from ev
        """,
        (n,),
    )


def delivered(db: psycopg.Connection) -> int:
    row = db.execute("select count(*) from deliveries where status = 'delivered'").fetchone()
    return row[0] if row else 0


def test_ten_thousand_deliveries_across_four_workers_each_exactly_once(
    dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path
) -> None:
    n = 10_000
    bulk_events(db, n)
    # Production-like lease: a CPU-starved CI machine must not expire live leases here.
    env = {"DEST_CRM_URL": receiver.url("/crm"), "DEST_CRM_SECRET": "s", "LEASE_S": "60"}
    workers = [start_worker(dsn, tmp_path / f"w{i}.log", **env) for i in range(4)]
    try:
        wait_until(lambda: delivered(db) == n, timeout_s=240)
    finally:
        codes = [w.terminate() for w in workers]
    assert codes == [0, 0, 0, 0]
    ids = collections.Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert len(ids) == n
    assert max(ids.values()) == 1, "a delivery was sent twice"
    per_worker = db.execute(
        "select worker, count(*) from webhook_deliveries group by worker"
    ).fetchall()
    assert len(per_worker) == 4, per_worker  # every process took a share
    assert db.execute("select count(*) from webhook_deliveries").fetchone() == (n,)
    assert db.execute("select count(*) from workers").fetchone() == (0,)


def test_sigkilled_worker_mid_dispatch_loses_nothing(
    dsn: str, db: psycopg.Connection, receiver: Receiver, tmp_path: Path
) -> None:
    n = 20
    bulk_events(db, n)
    env = {"DEST_CRM_URL": receiver.url("/crm"), "LEASE_S": "3", "HEARTBEAT_S": "0.5"}
    receiver.hold()  # every request hangs until released: the worker is mid-dispatch
    doomed = start_worker(dsn, tmp_path / "doomed.log", **env)
    receiver.wait_for(n, timeout_s=30)
    running = db.execute("select count(*) from deliveries where status = 'running'").fetchone()
    assert running == (n,)
    doomed.kill()
    receiver.release()
    survivor = start_worker(dsn, tmp_path / "survivor.log", **env)
    try:
        wait_until(lambda: delivered(db) == n, timeout_s=60)
    finally:
        assert survivor.terminate() == 0
    ids = collections.Counter(r.headers["webhook-id"] for r in receiver.requests)
    # At-least-once: each was seen by the receiver from the dead worker, then once more.
    assert len(ids) == n and set(ids.values()) == {2}
    outcomes = dict(
        db.execute("select outcome, count(*) from webhook_deliveries group by outcome").fetchall()
    )
    assert outcomes == {"lease_expired": n, "delivered": n}
    assert db.execute("select max(attempts) from deliveries").fetchone() == (2,)
