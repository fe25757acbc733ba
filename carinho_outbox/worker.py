"""The worker loop: claim short, dispatch with no transaction open, finish guarded.

One asyncio loop per process. The claimer takes as many due rows as there is free capacity,
one statement per batch; each job is dispatched in its own task; finished outcomes are written
by a single flusher in batches (one statement per batch, group-commit style: while one batch
is being written the next one accumulates). Wake-ups come from LISTEN/NOTIFY, with polling as
the fallback, so a lost notification costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import psycopg

from . import metrics
from .adapters import Adapter
from .mapping import MappingError
from .protection import needs_write, plan, tally
from .records import Job, Outcome, SendResult
from .rendering import Renderer
from .retry import decide
from .settings import RetryPolicy, Settings
from .store import Store, listen

log = logging.getLogger(__name__)

LISTEN_RETRY_S = 1.0
FLUSH_RETRY_S = 0.5
RESCUE_BATCH = 1000
# Local wake-ups for this worker's own retries; beyond this many, the poll catches them.
MAX_RETRY_TIMERS = 10_000
T = TypeVar("T")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        adapters: Mapping[str, Adapter],
        policies: Mapping[str, RetryPolicy],
        *,
        dsn: str,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.adapters = dict(adapters)
        self.policies = dict(policies)
        self.default_policy = settings.default_retry()
        self.dsn = dsn
        self.queues = queues or settings.queues
        self.concurrency = concurrency or settings.worker_concurrency
        self.batch_size = min(settings.worker_batch_size, self.concurrency)
        self.id = worker_id or new_worker_id()
        self.renderer = Renderer(store)
        self.in_flight = 0
        self.processed = 0
        self.stopping = False
        self._wake = asyncio.Event()
        self._outcomes: list[Outcome] = []
        self._outcomes_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()
        self.configs = dict(settings.destinations)
        self._states: dict[str, dict[str, Any]] = {}
        self._plan = plan(self.adapters, self.configs, {})
        self._tallies: dict[str, tuple[int, int, str | None]] = {}
        self._retry_times: list[float] = []
        self._log_each = settings.log_delivered == "each"
        self._held: set[int] = set()  # ids claimed and not yet recorded: the leases we extend
        self._next_promote = 0.0

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.store.ensure_destination_states(sorted(self.adapters))
        await self._refresh_states()
        await self.store.register_worker(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
        )
        log.info(
            "worker started",
            extra={
                "action": "worker_started",
                "worker": self.id,
                "queues": self.queues,
                "concurrency": self.concurrency,
                "destinations": sorted(self.adapters),
            },
        )
        helpers = [
            asyncio.create_task(self._listen(), name="listen"),
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._maintain(), name="maintain"),
        ]
        claimer = asyncio.create_task(self._claim_loop(stop), name="claim")
        try:
            await stop.wait()
        finally:
            self.stopping = True
            self._wake.set()
            await self._drain(claimer)
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._final_flush()
            released = await self._safe(self.store.release_leases(worker=self.id), 0)
            for adapter in self.adapters.values():
                with contextlib.suppress(Exception):
                    await adapter.aclose()
            await self._safe(self.store.deregister_worker(id=self.id), None)
            log.info(
                "worker stopped",
                extra={
                    "action": "worker_stopped",
                    "worker": self.id,
                    "released": released,
                    "processed": self.processed,
                },
            )

    async def _drain(self, claimer: asyncio.Task[None]) -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await claimer
        if self._tasks:
            log.info(
                "draining in-flight deliveries",
                extra={"action": "draining", "worker": self.id, "in_flight": len(self._tasks)},
            )
            _, late = await asyncio.wait(self._tasks, timeout=self.settings.shutdown_grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    async def _safe(self, coro: Awaitable[T], default: T) -> T:
        try:
            return await coro
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.warning("database call failed during shutdown: %s", type(exc).__name__)
            return default

    # --- claiming ------------------------------------------------------------------------

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._promote_if_due()
            want = min(self.batch_size, self.concurrency - self.in_flight)
            if want <= 0:
                await self._sleep(self._idle_wait())
                continue
            try:
                jobs = await self._claim(want)
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "claim failed: %s",
                    type(exc).__name__,
                    extra={"action": "claim_failed", "worker": self.id},
                )
                await self._sleep(self.settings.poll_interval_s)
                continue
            if jobs:
                log.debug("claimed", extra={"action": "claimed", "count": len(jobs)})
            for job in jobs:
                self.in_flight += 1
                self._held.add(job.id)
                task = asyncio.create_task(self._process(job))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(jobs) < want:
                await self._sleep(self._idle_wait())

    async def _claim(self, want: int) -> list[Job]:
        plan = self._plan
        jobs: list[Job] = []
        if plan.fast:
            jobs = await self.store.claim(
                worker=self.id,
                destinations=plan.fast,
                queues=self.queues,
                limit=want,
                lease_s=self.settings.lease_s,
                max_wait_s=self.settings.max_wait_s,
            )
        for name in plan.guarded:
            if len(jobs) >= want:
                break
            config = self.configs[name]
            jobs += await self.store.claim_destination(
                worker=self.id,
                destination=name,
                queues=self.queues,
                want=want - len(jobs),
                lease_s=self.settings.lease_s,
                max_in_flight=config.max_in_flight,
                rate_per_s=config.rate_per_s,
            )
        for name in plan.probes:
            if len(jobs) >= want:
                break
            if await self.store.take_probe(destination=name, lease_s=self.settings.lease_s):
                config = self.configs.get(name)
                probe = await self.store.claim_destination(
                    worker=self.id,
                    destination=name,
                    queues=self.queues,
                    want=1,
                    lease_s=self.settings.lease_s,
                    max_in_flight=config.max_in_flight if config else None,
                    rate_per_s=None,
                    probe=True,
                )
                log.info(
                    "circuit half-open: probing",
                    extra={"action": "circuit_probe", "destination": name, "count": len(probe)},
                )
                jobs += probe
                await self._refresh_states()
        return jobs

    async def _promote_if_due(self) -> None:
        now = time.monotonic()
        while self._retry_times and self._retry_times[0] <= now:
            heapq.heappop(self._retry_times)
            self._next_promote = 0.0
        if now < self._next_promote:
            return
        self._next_promote = now + self.settings.poll_interval_s
        try:
            await self.store.promote_due()
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "promote failed: %s", type(exc).__name__, extra={"action": "promote_failed"}
            )

    def _idle_wait(self) -> float:
        now = time.monotonic()
        until = self._next_promote
        if self._retry_times:
            until = min(until, self._retry_times[0])
        return max(0.001, min(self.settings.poll_interval_s, until - now))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    # --- dispatching ---------------------------------------------------------------------

    async def _process(self, job: Job) -> None:
        policy = self.policies.get(job.destination, self.default_policy)
        try:
            data = await self.renderer.data_for(job)
        except MappingError as exc:
            result = SendResult(ok=False, permanent=True, error=f"mapping error: {exc}")
        except (psycopg.Error, OSError) as exc:
            result = SendResult(ok=False, error=f"could not load mapping: {type(exc).__name__}")
        else:
            try:
                result = await self.adapters[job.destination].send(job, data)
            except Exception as exc:  # an adapter bug must not kill the worker or lose the row
                log.exception("adapter crashed", extra={"action": "adapter_error", "job": job.id})
                result = SendResult(ok=False, error=f"adapter error: {type(exc).__name__}: {exc}")
        decision = decide(
            attempt=job.attempt,
            max_attempts=job.max_attempts or policy.max_attempts,
            result=result,
            policy=policy,
        )
        outcome = Outcome(job=job, status=decision.status, result=result, delay_s=decision.delay_s)
        self._outcomes.append(outcome)
        self._outcomes_ready.set()

    # --- finishing -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready.clear()
            await self._flush_once()

    async def _flush_once(self) -> bool:
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return True
        try:
            kept = await self.store.record_outcomes(worker=self.id, outcomes=batch)
        except (psycopg.Error, OSError) as exc:
            # Keep them and try again: if this process dies first, the leases expire and the
            # deliveries are sent again (at-least-once), never lost.
            log.warning(
                "could not record outcomes: %s",
                type(exc).__name__,
                extra={"action": "record_failed", "count": len(batch)},
            )
            self._outcomes[:0] = batch
            await asyncio.sleep(FLUSH_RETRY_S)
            self._outcomes_ready.set()
            return False
        for outcome in batch:
            self._held.discard(outcome.job.id)
            self._log_outcome(outcome, lease_held=outcome.job.id in kept)
            if outcome.job.id not in kept:
                continue
            metrics.observe_outcome(outcome)
            if outcome.status == "pending" and len(self._retry_times) < MAX_RETRY_TIMERS:
                heapq.heappush(self._retry_times, time.monotonic() + outcome.delay_s)
            elif outcome.job.ordering_key is not None:
                self._next_promote = 0.0  # the next delivery of this key may go now
        if not self._log_each:
            delivered: dict[str, int] = {}
            for outcome in batch:
                if outcome.status == "delivered" and outcome.job.id in kept:
                    delivered[outcome.job.destination] = (
                        delivered.get(outcome.job.destination, 0) + 1
                    )
            if delivered:
                log.info(
                    "delivered %d",
                    sum(delivered.values()),
                    extra={
                        "action": "delivered_batch",
                        "worker": self.id,
                        "by_destination": delivered,
                    },
                )
        self.in_flight -= len(batch)
        self.processed += len(batch)
        await self._record_breakers(tally(o for o in batch if o.job.id in kept))
        self._wake.set()
        return True

    async def _record_breakers(self, tallies: dict[str, tuple[int, int, str | None]]) -> None:
        for name, (ok, fail, err) in tallies.items():
            prev = self._tallies.get(name, (0, 0, None))
            self._tallies[name] = (prev[0] + ok, prev[1] + fail, err or prev[2])
        if not needs_write(self._tallies, self._states):
            return  # healthy: written with the next heartbeat
        await self._write_breakers()

    async def _write_breakers(self) -> None:
        tallies, self._tallies = self._tallies, {}
        if not tallies:
            return
        try:
            changes = await self.store.record_breakers(
                tallies=tallies,
                threshold=self.settings.breaker_threshold,
                pause_s=self.settings.breaker_pause_s,
            )
        except (psycopg.Error, OSError) as exc:
            log.warning("could not record circuit state: %s", type(exc).__name__)
            return
        for change in changes:
            log.warning(
                "circuit %s → %s",
                change["before"],
                change["after"],
                extra={
                    "action": "circuit_opened"
                    if change["after"] == "open"
                    else "circuit_closed"
                    if change["after"] == "closed"
                    else "circuit_changed",
                    "destination": change["destination"],
                    "paused_until": str(change["paused_until"]),
                },
            )
        if changes:
            await self._refresh_states()
            opened = [c["destination"] for c in changes if c["after"] == "open"]
            if opened:
                await self.store.defer_paused(destinations=opened)
            if any(c["after"] == "closed" for c in changes):
                self._next_promote = 0.0

    async def _refresh_states(self) -> None:
        rows = await self.store.destination_states()
        self._states = {r["destination"]: r for r in rows}
        self._plan = plan(self.adapters, self.configs, self._states)

    async def _final_flush(self) -> None:
        deadline = time.monotonic() + 5.0
        while self._outcomes and time.monotonic() < deadline:
            await self._flush_once()

    def _log_outcome(self, outcome: Outcome, *, lease_held: bool) -> None:
        job = outcome.job
        fields = {
            "worker": self.id,
            "delivery_id": job.id,
            "event_id": str(job.event_id),
            "destination": job.destination,
            "attempt": job.attempt,
            "http_status": outcome.result.http_status,
            "duration_ms": round(outcome.result.duration_ms, 2),
        }
        if not lease_held:
            log.warning("lease lost; outcome discarded", extra={"action": "lease_lost", **fields})
        elif outcome.status == "delivered":
            # One INFO line per flushed batch by default (the attempt row is the per-delivery
            # record); LOG_DELIVERED=each logs every delivery at INFO.
            level = logging.INFO if self._log_each else logging.DEBUG
            log.log(level, "delivered", extra={"action": "delivered", **fields})
        elif outcome.status == "pending":
            log.info(
                "retry scheduled",
                extra={
                    "action": "retry_scheduled",
                    "delay_s": round(outcome.delay_s, 3),
                    "error": outcome.result.error,
                    **fields,
                },
            )
        else:
            log.warning(
                "dead-lettered",
                extra={"action": "dead_lettered", "error": outcome.result.error, **fields},
            )

    # --- background duties ---------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                async for queue in listen(self.dsn, on_ready=self._on_listening):
                    if queue in self.queues or not queue:
                        self._wake.set()
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning(
                    "listener lost its connection: %s",
                    type(exc).__name__,
                    extra={"action": "listen_failed"},
                )
                await asyncio.sleep(LISTEN_RETRY_S)

    def _on_listening(self) -> None:
        self.listening.set()
        # A notification may have been missed while (re)connecting.
        self._wake.set()

    async def _maintain(self) -> None:
        """Heartbeat, lease extension for live work, and rescue of other workers' dead leases."""
        default_max = self.default_policy.max_attempts
        while True:
            try:
                await self.store.heartbeat_worker(
                    id=self.id,
                    in_flight=self.in_flight,
                    processed=self.processed,
                    stopping=self.stopping,
                )
                if self._held:
                    await self.store.extend_leases(
                        worker=self.id, ids=sorted(self._held), lease_s=self.settings.lease_s
                    )
                await self._write_breakers()
                await self._refresh_states()
                if self._plan.paused:
                    await self.store.defer_paused(destinations=self._plan.paused)
                if self._plan.probes:
                    self._wake.set()
                rescued = await self.store.rescue_expired(
                    worker=self.id, default_max_attempts=default_max, limit=RESCUE_BATCH
                )
                if rescued:
                    log.warning(
                        "rescued expired leases",
                        extra={"action": "lease_rescued", "count": len(rescued)},
                    )
                    self._wake.set()
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "maintenance failed: %s",
                    type(exc).__name__,
                    extra={"action": "maintain_failed"},
                )
            await asyncio.sleep(self.settings.heartbeat_s)
