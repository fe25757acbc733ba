"""The autoscaling supervisor: the pure step function, then real processes under a growing
backlog (scale up by at most one per cooldown, back down when drained, a killed child
replaced, SIGTERM drains every child and exits 0)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from carinho_outbox.store import Store
from carinho_outbox.supervisor import Balance, QueueLoad, plan_step, target_processes
from tests.support.engine import ingest
from tests.support.procs import Proc, proc_env, wait_until
from tests.support.receiver import Receiver, Reply

BAL = Balance(
    min_processes=1,
    max_processes=4,
    max_shift=1,
    cooldown_s=3.0,
    backlog_per_process=100,
    max_age_s=5.0,
)


def load(backlog: int, age: float = 0.0, queue: str = "default") -> list[QueueLoad]:
    return [QueueLoad(queue, backlog, age)]


def test_target_follows_backlog_and_bounds() -> None:
    assert target_processes(2, load(0), BAL) == 1
    assert target_processes(1, load(1), BAL) == 1
    assert target_processes(1, load(250), BAL) == 3
    assert target_processes(1, load(10_000), BAL) == 4
    # Summed over queues.
    two = [QueueLoad("critical", 150, 0.0), QueueLoad("low", 150, 0.0)]
    assert target_processes(1, two, BAL) == 3


def test_old_work_asks_for_one_more_than_now() -> None:
    assert target_processes(2, load(10, age=9.0), BAL) == 3
    assert target_processes(4, load(10, age=9.0), BAL) == 4


def test_step_is_bounded_by_max_shift_and_cooldown() -> None:
    assert plan_step(1, load(10_000), BAL, now=100.0, last_change_at=0.0) == 2
    assert plan_step(2, load(10_000), BAL, now=101.0, last_change_at=100.0) == 2  # cooling
    wide = Balance(1, 10, max_shift=3, cooldown_s=0.0, backlog_per_process=100)
    assert plan_step(1, load(10_000), wide, now=1.0, last_change_at=0.0) == 4
    assert plan_step(4, load(0), wide, now=2.0, last_change_at=1.0) == 1


def test_no_scale_down_while_work_is_late() -> None:
    # Late work grows the count (up to the max), it never shrinks it.
    assert plan_step(3, load(50, age=30.0), BAL, now=100.0, last_change_at=0.0) == 4
    capped = Balance(1, 3, cooldown_s=3.0, backlog_per_process=100, max_age_s=5.0)
    assert plan_step(3, load(50, age=30.0), capped, now=100.0, last_change_at=0.0) == 3
    assert plan_step(3, load(50, age=0.5), BAL, now=100.0, last_change_at=0.0) == 2


def test_out_of_bounds_count_is_fixed_at_once() -> None:
    assert plan_step(7, load(0), BAL, now=0.0, last_change_at=0.0) == 4


# --- real processes ---------------------------------------------------------------------------


def _alive_pids(db: psycopg.Connection) -> list[int]:
    rows = db.execute(
        "select pid from workers where not stopping"
        " and last_seen_at > now() - interval '2 seconds' order by pid"
    ).fetchall()
    return [r[0] for r in rows]


def _scaled_events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"action": "scaled"' in line:
            out.append(json.loads(line))
    return out


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie child of the (exited) supervisor is reparented and reaped; treat as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.slow
async def test_autoscaling_under_a_growing_backlog(
    dsn: str, db: psycopg.Connection, store: Store, tmp_path: Path
) -> None:
    slow = Receiver(lambda _r, _n: Reply(delay_s=0.2)).start()
    log = tmp_path / "supervisor.log"
    env = proc_env(
        dsn,
        DEST_CRM_URL=slow.url("/crm"),
        WORKER_CONCURRENCY="2",
        LOG_LEVEL="INFO",
        AUTOSCALE_INTERVAL_S="0.3",
        AUTOSCALE_COOLDOWN_S="1.5",
        AUTOSCALE_MAX_SHIFT="1",
        AUTOSCALE_BACKLOG_PER_PROCESS="20",
        AUTOSCALE_MAX_AGE_S="2",
    )
    sup = Proc(
        "carinho_outbox.worker_cli",
        env,
        "--processes",
        "auto",
        "--min-processes",
        "1",
        "--max-processes",
        "3",
        log=log,
    )
    try:
        wait_until(lambda: len(_alive_pids(db)) == 1, timeout_s=30)

        # A growing backlog: 2 slots per process at 0.2 s each is ~10 deliveries/s per
        # process, far below what arrives.
        sent = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_alive_pids(db)) < 3:
            for _ in range(15):
                sent += 1
                await ingest(
                    store,
                    "payment.failed",
                    {
                        "payment_id": f"p-{sent}",
                        "invoice_id": f"i-{sent}",
                        "client_id": f"c-{sent}",
                        "reason": "recusado",
                    },
                    "financeiro",
                )
            time.sleep(0.5)
        wait_until(lambda: len(_alive_pids(db)) == 3, timeout_s=20)

        steps = _scaled_events(log)
        ups = [s for s in steps if int(s["to"]) > int(s["from"])]  # type: ignore[call-overload]
        assert [(s["from"], s["to"]) for s in ups][:2] == [(1, 2), (2, 3)]
        assert all(abs(int(s["to"]) - int(s["from"])) <= 1 for s in steps)  # type: ignore[call-overload]

        # A child killed outright is replaced.
        victim = _alive_pids(db)[-1]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(_alive_pids(db)) == 3 and victim not in _alive_pids(db), timeout_s=30
        )

        # Drained: back down to the minimum, one step per cooldown.
        slow.script = lambda _r, _n: Reply()
        wait_until(
            lambda: (
                db.execute(
                    "select count(*) from deliveries where status <> 'delivered'"
                ).fetchone()[0]  # type: ignore[index]
                == 0
            ),
            timeout_s=60,
        )
        wait_until(lambda: len(_alive_pids(db)) == 1, timeout_s=30)
        downs = [s for s in _scaled_events(log) if int(s["to"]) < int(s["from"])]  # type: ignore[call-overload]
        assert [(s["from"], s["to"]) for s in downs][-2:] == [(3, 2), (2, 1)]
        delivered = db.execute("select count(*) from deliveries").fetchone()[0]  # type: ignore[index]
        assert delivered == sent
        got = {r.headers["webhook-id"] for r in slow.requests}
        assert len(got) == sent

        # SIGTERM: every child drains and the supervisor exits 0.
        children = _alive_pids(db)
        assert len(children) == 1
        assert sup.terminate(timeout_s=40) == 0
        wait_until(lambda: all(_pid_gone(p) for p in children), timeout_s=10)
        running = db.execute("select count(*) from deliveries where status = 'running'")
        assert running.fetchone()[0] == 0  # type: ignore[index]
        # Each child deregistered on its way out (only the SIGKILLed one left a stale row).
        left = db.execute("select count(*) from workers where pid = any(%s)", (children,))
        assert left.fetchone()[0] == 0  # type: ignore[index]
    finally:
        if sup.popen.poll() is None:
            sup.kill()
        slow.stop()


@pytest.mark.slow
def test_fixed_process_count(dsn: str, db: psycopg.Connection, tmp_path: Path) -> None:
    env = proc_env(dsn, LOG_LEVEL="INFO")
    sup = Proc("carinho_outbox.worker_cli", env, "--processes", "2", log=tmp_path / "s.log")
    try:
        wait_until(lambda: len(_alive_pids(db)) == 2, timeout_s=30)
        assert sup.terminate(timeout_s=40) == 0
        assert db.execute("select count(*) from workers").fetchone()[0] == 0  # type: ignore[index]
    finally:
        if sup.popen.poll() is None:
            sup.kill()
