"""`carinho-worker --processes auto|N`: a supervisor of worker processes.

It spawns `python -m carinho_outbox.worker_cli` children (each a full worker: its own pool,
LISTEN connection and event loop, so a busy host uses every core), restarts any that die, and
with `--processes auto` scales their number by the work waiting in the table, like Horizon's
"auto" balancing but on table state only:

- every AUTOSCALE_INTERVAL_S it reads, per queue, the due pending deliveries of the
  destinations it serves and the age of the oldest (one indexed query, `autoscale_load`);
- the target is one process per AUTOSCALE_BACKLOG_PER_PROCESS waiting deliveries (summed
  over queues), and one more than now while any queue's oldest waits past
  AUTOSCALE_MAX_AGE_S; never below --min-processes or above --max-processes; no backlog at
  all means --min-processes;
- it moves at most AUTOSCALE_MAX_SHIFT processes per step and takes a step at most every
  AUTOSCALE_COOLDOWN_S (Horizon's balanceMaxShift / balanceCooldown), and never scales down
  while work waits past the age limit.

Scaling down sends SIGTERM to the newest child, which stops claiming and drains within
SHUTDOWN_GRACE_S. On SIGTERM/SIGINT the supervisor forwards SIGTERM to every child, waits
SHUTDOWN_GRACE_S (+ a margin) and exits 0; a child still alive then is killed, and its leases
expire and are rescued like a crash. The decision is a pure function (`plan_step`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from .registry import build_adapters, http_client
from .settings import Settings
from .store import Store, make_pool

log = logging.getLogger("carinho_outbox.supervisor")

TICK_S = 0.25
# A child that dies this soon after starting is crash-looping: restarts back off.
QUICK_DEATH_S = 10.0
RESTART_BACKOFF_MAX_S = 30.0
STOP_MARGIN_S = 5.0
LOAD_CAP = 100_000


@dataclass(frozen=True, slots=True)
class QueueLoad:
    queue: str
    backlog: int
    oldest_age_s: float


@dataclass(frozen=True, slots=True)
class Balance:
    min_processes: int
    max_processes: int
    max_shift: int = 1
    cooldown_s: float = 3.0
    backlog_per_process: int = 2000
    max_age_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, min_processes: int, max_processes: int) -> Balance:
        return cls(
            min_processes=min_processes,
            max_processes=max(min_processes, max_processes),
            max_shift=settings.autoscale_max_shift,
            cooldown_s=settings.autoscale_cooldown_s,
            backlog_per_process=settings.autoscale_backlog_per_process,
            max_age_s=settings.autoscale_max_age_s,
        )


def target_processes(current: int, loads: Sequence[QueueLoad], balance: Balance) -> int:
    """How many processes the waiting work asks for (before max shift and cooldown)."""
    backlog = sum(max(0, q.backlog) for q in loads)
    if backlog == 0:
        return balance.min_processes
    want = math.ceil(backlog / balance.backlog_per_process)
    if any(q.backlog > 0 and q.oldest_age_s > balance.max_age_s for q in loads):
        # The processes we have are not keeping up: grow past the backlog estimate.
        want = max(want, current + 1)
    return max(balance.min_processes, min(balance.max_processes, want))


def plan_step(
    current: int,
    loads: Sequence[QueueLoad],
    balance: Balance,
    *,
    now: float,
    last_change_at: float,
) -> int:
    """The process count to move to now: towards the target, bounded by shift and cooldown."""
    bounded = max(balance.min_processes, min(balance.max_processes, current))
    if bounded != current:
        return bounded  # outside the bounds (e.g. a restart with new flags): fix at once
    target = target_processes(current, loads, balance)
    if target == current or now - last_change_at < balance.cooldown_s:
        return current
    if target < current and any(
        q.backlog > 0 and q.oldest_age_s > balance.max_age_s for q in loads
    ):
        return current
    shift = max(-balance.max_shift, min(balance.max_shift, target - current))
    return current + shift


# --- children -------------------------------------------------------------------------------


@dataclass
class ChildProc:
    popen: subprocess.Popen[bytes]
    started_at: float
    stopping_since: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Supervisor:
    settings: Settings
    dsn: str
    child_args: list[str]
    balance: Balance
    auto: bool
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[ChildProc] = field(default_factory=list)
    retiring: list[ChildProc] = field(default_factory=list)
    last_change_at: float = float("-inf")
    wanted: int = 0  # the count the plan settled on; dead children are replaced up to it
    restarts: int = 0
    _restart_delay_s: float = 1.0
    _next_restart_at: float = 0.0

    @property
    def active(self) -> int:
        return len(self.children)

    def spawn(self) -> ChildProc:
        env = dict(self.env)
        env["DATABASE_URL"] = self.dsn
        popen = subprocess.Popen(
            [sys.executable, "-m", "carinho_outbox.worker_cli", *self.child_args],
            env=env,
        )
        child = ChildProc(popen, time.monotonic())
        self.children.append(child)
        log.info(
            "worker process started",
            extra={"action": "process_started", "pid": popen.pid, "processes": self.active},
        )
        return child

    def retire_one(self) -> None:
        """SIGTERM the newest child: it stops claiming and drains within the grace period."""
        child = self.children.pop()
        child.stopping_since = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(signal.SIGTERM)
        self.retiring.append(child)
        log.info(
            "worker process retiring",
            extra={"action": "process_retiring", "pid": child.pid, "processes": self.active},
        )

    def reap(self) -> None:
        now = time.monotonic()
        grace = self.settings.shutdown_grace_s + STOP_MARGIN_S
        for child in list(self.retiring):
            if child.popen.poll() is not None:
                self.retiring.remove(child)
            elif child.stopping_since is not None and now - child.stopping_since > grace:
                log.warning(
                    "worker process did not stop in time; killed",
                    extra={"action": "process_killed", "pid": child.pid},
                )
                child.popen.kill()
        for child in list(self.children):
            code = child.popen.poll()
            if code is None:
                continue
            self.children.remove(child)
            self.restarts += 1
            quick = now - child.started_at < QUICK_DEATH_S
            self._restart_delay_s = (
                min(RESTART_BACKOFF_MAX_S, self._restart_delay_s * 2) if quick else 1.0
            )
            self._next_restart_at = now + (self._restart_delay_s if quick else 0.0)
            log.warning(
                "worker process exited; restarting",
                extra={
                    "action": "process_died",
                    "pid": child.pid,
                    "exit_code": code,
                    "restart_in_s": round(max(0.0, self._next_restart_at - now), 1),
                },
            )

    def fill(self, wanted: int) -> None:
        """Start children up to `wanted` (respecting the crash-loop back-off)."""
        while self.active < wanted and time.monotonic() >= self._next_restart_at:
            self.spawn()

    def scale_to(self, wanted: int, loads: Sequence[QueueLoad]) -> None:
        if wanted == self.wanted:
            return
        log.info(
            "scaling workers",
            extra={
                "action": "scaled",
                "from": self.wanted,
                "to": wanted,
                "backlog": {q.queue: q.backlog for q in loads},
                "oldest_age_s": {q.queue: round(q.oldest_age_s, 1) for q in loads},
            },
        )
        self.wanted = wanted
        while self.active > wanted:
            self.retire_one()
        self.fill(wanted)
        self.last_change_at = time.monotonic()

    def stop_all(self) -> None:
        everyone = self.children + self.retiring
        for child in everyone:
            if child.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + STOP_MARGIN_S
        for child in everyone:
            left = max(0.1, deadline - time.monotonic())
            try:
                child.popen.wait(timeout=left)
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker process did not stop in time; killed",
                    extra={"action": "process_killed", "pid": child.pid},
                )
                child.popen.kill()
                child.popen.wait(timeout=5)
        self.children.clear()
        self.retiring.clear()


async def served_destinations(settings: Settings, store: Store) -> list[str]:
    """The destinations the children will claim for (the same registry they build)."""
    client = http_client(settings, 1)
    try:
        return sorted(build_adapters(settings, client, store))
    finally:
        await client.aclose()


async def run(
    settings: Settings,
    dsn: str,
    *,
    child_args: list[str],
    processes: int | None,
    min_processes: int,
    max_processes: int,
    queues: list[str] | None,
    stop: asyncio.Event,
) -> int:
    """Supervise until `stop`; with processes=None, autoscale between min and max."""
    auto = processes is None
    balance = Balance.from_settings(
        settings,
        min_processes if auto else processes or 1,
        max_processes if auto else processes or 1,
    )
    sup = Supervisor(settings, dsn, child_args, balance, auto)
    pool = make_pool(dsn, max_size=1, timeout_s=settings.db_pool_timeout_s, name="carinho-sup")
    await pool.open(wait=False)
    store = Store(pool)
    serve_queues = queues or settings.queues
    destinations = await served_destinations(settings, store)
    log.info(
        "supervisor started",
        extra={
            "action": "supervisor_started",
            "mode": "auto" if auto else "fixed",
            "min_processes": balance.min_processes,
            "max_processes": balance.max_processes,
            "queues": serve_queues,
        },
    )
    sup.wanted = balance.min_processes
    sup.fill(sup.wanted)
    sup.last_change_at = time.monotonic()
    next_check = 0.0
    try:
        while not stop.is_set():
            sup.reap()
            if auto and time.monotonic() >= next_check:
                next_check = time.monotonic() + settings.autoscale_interval_s
                try:
                    rows = await store.autoscale_load(
                        queues=serve_queues, destinations=destinations, cap=LOAD_CAP
                    )
                except (psycopg.Error, OSError) as exc:
                    # Without a reading, hold steady: the children keep working either way.
                    log.warning(
                        "could not read the backlog: %s",
                        type(exc).__name__,
                        extra={"action": "autoscale_read_failed"},
                    )
                    rows = None
                if rows is not None:
                    loads = [
                        QueueLoad(r["queue"], int(r["backlog"]), float(r["oldest_age_s"]))
                        for r in rows
                    ]
                    wanted = plan_step(
                        sup.wanted,
                        loads,
                        balance,
                        now=time.monotonic(),
                        last_change_at=sup.last_change_at,
                    )
                    sup.scale_to(wanted, loads)
            # Replace children that died, up to the count the plan last settled on.
            sup.fill(sup.wanted)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=TICK_S)
    finally:
        log.info(
            "supervisor stopping",
            extra={"action": "supervisor_stopping", "processes": sup.active},
        )
        await asyncio.to_thread(sup.stop_all)
        await pool.close()
    return 0


def main(
    settings: Settings,
    dsn: str,
    *,
    processes: str,
    min_processes: int,
    max_processes: int,
    queues: str | None,
    concurrency: int | None,
) -> int:
    """Entry point used by worker_cli when --processes is given."""
    fixed: int | None = None
    if processes != "auto":
        fixed = int(processes)
        if fixed < 1:
            raise SystemExit("carinho-worker: --processes must be 'auto' or a positive number")
    if min_processes < 1 or max_processes < min_processes:
        raise SystemExit("carinho-worker: need 1 <= --min-processes <= --max-processes")
    child_args: list[str] = []
    if queues:
        child_args += ["--queues", queues]
    if concurrency:
        child_args += ["--concurrency", str(concurrency)]
    queue_list = [q for q in (queues or "").split(",") if q] or None

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run(
            settings,
            dsn,
            child_args=child_args,
            processes=fixed,
            min_processes=min_processes,
            max_processes=max_processes,
            queues=queue_list,
            stop=stop,
        )

    return asyncio.run(_main())
