"""A claim whose reply never reached the worker (the connection died between the claim's
commit and its answer, as it can when Postgres restarts)."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.faults.support import Load, Stack, receiver_env, wait_for_worker
from tests.support.procs import wait_until
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.faults

LEASE_S = 3.0


def test_rows_claimed_by_a_lost_reply_are_rescued_while_the_worker_stays_busy(
    db: psycopg.Connection, stack: Stack, crm_key: str, receiver: Receiver
) -> None:
    """Fault: three deliveries are `running` under a live worker's id with a fresh lease, but
    the worker does not know them: exactly the state a claim leaves when its commit happened
    and its reply was lost with the connection. Events keep flowing, so the worker is never
    idle.

    Expected: nobody is working on them, so their lease runs out (LEASE_S=3) and they are
    rescued and delivered, within a few seconds, while the load goes on. (The heartbeat extends
    only the leases of rows the worker really holds: `extend_leases` takes their ids.)"""
    receiver.script = lambda _r, _n: Reply(delay_s=0.3)
    env = receiver_env(receiver, LEASE_S=str(LEASE_S), HEARTBEAT_S="0.5")
    web = stack.web()
    worker = stack.worker(**env)
    worker_id = wait_for_worker(db, worker)
    load = Load(web.url("/events"), crm_key, n=400, prefix="lost", rate_per_s=20).start()
    wait_until(lambda: load.done >= 40, timeout_s=30)
    orphans = [r[0] for r in db.execute(
        """
        with ev as (
            insert into events (type, source, payload)
            values ('invoice.created', 'financeiro', '{"invoice_id": "i-lost",
                    "client_id": "c-lost", "amount_cents": 100, "due_date": "2026-12-10"}')
            returning id
        )
        insert into deliveries (event_id, destination, queue, priority, status, attempts,
                                locked_by, locked_until)
        select ev.id, 'crm', 'default', 100, 'running', 1, %s,
               now() + make_interval(secs => %s)
        from ev, generate_series(1, 3)
        returning id
        """,
        (worker_id, LEASE_S),
    ).fetchall()]
    started = time.monotonic()
    try:
        wait_until(
            lambda: db.execute(
                "select count(*) = 3 from deliveries where id = any(%s) and status = 'delivered'",
                (orphans,),
            ).fetchone()[0],
            timeout_s=LEASE_S + 6,
        )
        assert load.done < load.n, "the load ended first: the worker was idle, not busy"
    finally:
        load.n = load.done  # stop the stream: the test is over either way
        load.wait(timeout_s=30)
    assert time.monotonic() - started < LEASE_S + 6
