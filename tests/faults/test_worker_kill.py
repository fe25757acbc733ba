"""Workers SIGKILLed mid-batch, repeatedly, while events keep arriving."""

from __future__ import annotations

import psycopg
import pytest

from tests.faults.support import (
    Load,
    Stack,
    receiver_env,
    reconcile,
    record,
    secrets_in,
    wait_for_worker,
    wait_settled,
)
from tests.support.procs import wait_until
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.faults

KILLS = 5
EVENTS = 400


def held_by(db: psycopg.Connection, worker: str) -> list[int]:
    return [
        r[0]
        for r in db.execute(
            "select id from deliveries where status = 'running' and locked_by = %s", (worker,)
        ).fetchall()
    ]


def test_sigkill_of_workers_mid_batch_loses_nothing(
    db: psycopg.Connection, stack: Stack, crm_key: str, receiver: Receiver
) -> None:
    """Fault: a worker process is SIGKILLed (no cleanup, no lease release) while it holds
    claimed deliveries that are mid-dispatch, five times, alternating between two workers, with
    a stream of POST /events going on. A replacement starts after each kill.

    Expected: the dead worker's leases expire (LEASE_S=3) and a live worker rescues them; each
    is sent again (a duplicate at the receiver only when the killed worker's request had reached
    it: at-least-once), every accepted event ends delivered, nothing dead, nothing running."""
    receiver.script = lambda _r, _n: Reply(delay_s=0.1)  # dispatch takes a while: kills land in it
    env = receiver_env(receiver, LEASE_S="3", HEARTBEAT_S="0.5", MAX_ATTEMPTS="20")
    web = stack.web()
    workers = [stack.worker(**env), stack.worker(**env)]
    ids = [wait_for_worker(db, w) for w in workers]
    load = Load(web.url("/events"), crm_key, n=EVENTS, prefix="kill", rate_per_s=40).start()
    kills: list[tuple[float, list[int]]] = []
    for k in range(KILLS):
        slot = k % 2
        wait_until(lambda s=slot: held_by(db, ids[s]), timeout_s=20, interval_s=0.01)
        workers[slot].kill()
        at = db.execute("select extract(epoch from now())::float8").fetchone()[0]
        # Read after the kill: what the dead process still holds is exactly what it orphaned.
        kills.append((at, held_by(db, ids[slot])))
        workers[slot] = stack.worker(**env)
        ids[slot] = wait_for_worker(db, workers[slot])
    load.wait(timeout_s=60)
    wait_settled(db, load, timeout_s=60)
    figures = reconcile(db, load, receiver.requests)

    assert figures["accepted"] == EVENTS and figures["stored"] == EVENTS
    assert figures["delivered"] == figures["deliveries"] == EVENTS * 3
    assert figures["dead_lettered"] == 0
    assert load.statuses() == {"202": EVENTS}
    rescued = db.execute(
        "select count(*) from webhook_deliveries where outcome = 'lease_expired'"
    ).fetchone()[0]
    # Every kill caught deliveries in flight, and every one of them was rescued.
    assert all(held for _, held in kills)
    held_ids = sorted({i for _, held in kills for i in held})
    assert rescued >= len(held_ids)
    assert db.execute(
        "select count(distinct delivery_id) from webhook_deliveries "
        "where outcome = 'lease_expired' "
        "and delivery_id = any(%s)", (held_ids,)).fetchone() == (len(held_ids),)
    # Time to recover: from the kill until the last delivery it held was settled again.
    recover = max(
        db.execute(
            "select extract(epoch from max(finished_at))::float8 - %s from deliveries "
            "where id = any(%s)",
            (at, held),
        ).fetchone()[0]
        for at, held in kills
    )
    assert recover < 20
    assert secrets_in(stack.log_text(), load) == []
    for w in workers:
        assert w.terminate() == 0
    assert db.execute("select count(*) from deliveries where status = 'running'").fetchone() == (
        0,
    )
    record(
        "test_sigkill_of_workers_mid_batch_loses_nothing",
        f"SIGKILL of a worker mid-batch x{KILLS}",
        {
            **figures,
            "kills": KILLS,
            "in_flight_at_kills": [len(h) for _, h in kills],
            "rescued": rescued,
            "recover_s": round(recover, 2),
        },
    )
