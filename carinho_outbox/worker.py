"""The worker loop: claim short, dispatch with no transaction open, finish guarded.

One asyncio loop per process. The claimer takes due rows in batches, one statement per batch,
once half the lanes are free (at once when the worker is idle); a fixed set of `concurrency`
lanes (long-lived tasks) dispatch the claimed jobs, so no task is created per delivery;
finished outcomes are written by a single flusher in batches (one statement per batch,
group-commit style: while one batch is being written the next one accumulates), and a lane is
free again as soon as its delivery is done, so claims overlap flushes.
Wake-ups come from LISTEN/NOTIFY, with polling as the fallback, so a lost notification costs
at most one poll interval.
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
from collections import deque
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg

from . import metrics
from .adapters import Adapter
from .mapping import MappingError, MappingSpec, render
from .protection import needs_write, plan, tally
from .records import Job, Outcome, SendResult
from .rendering import Renderer, meta_of
from .retry import decide
from .settings import RetryPolicy, Settings
from .store import Store, listen

log = logging.getLogger(__name__)

LISTEN_RETRY_S = 1.0
FLUSH_RETRY_S = 0.5
RESCUE_BATCH = 1000
# Local wake-ups for this worker's own retries; beyond this many, the poll catches them.
MAX_RETRY_TIMERS = 10_000
# Claim statements a worker may have on their way at once (each on its own pooled connection).
CLAIMS_IN_FLIGHT = 2
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
        self.listen_dsn = settings.listen_database_url or dsn
        self.queues = queues or settings.queues
        self.concurrency = concurrency or settings.worker_concurrency
        self.batch_size = min(settings.worker_batch_size, self.concurrency)
        # A busy worker claims again once half its lanes are free (or a whole batch): fewer,
        # fuller statements. A claim and the flush of what it brought cost a round trip, a
        # commit and an index scan each whatever their size: at 100 rows per claim instead of
        # ~35 the database spends a quarter less CPU per delivery.
        self._claim_min = max(1, min(self.batch_size, self.concurrency // 2))
        self._claiming = 0  # lanes promised to claims in flight
        self._drained = False
        self._claim_retry_at = 0.0
        self.id = worker_id or new_worker_id()
        self.renderer = Renderer(store)
        self.in_flight = 0  # claimed and not yet recorded (queued, dispatching or flushing)
        self.processed = 0
        self.stopping = False
        self._wake = asyncio.Event()
        self._outcomes: list[Outcome] = []
        self._outcomes_ready = asyncio.Event()
        # Claimed jobs waiting for a lane, the lanes, and the parked (idle) lanes' futures.
        self._queue: deque[Job] = deque()
        self._lanes: list[asyncio.Task[None]] = []
        self._parked: list[asyncio.Future[None]] = []
        self._dispatching = 0
        # Statement counts, logged at stop: deliveries per claim (claims that brought rows)
        # and per flush show whether the database round trips are being amortised.
        self.claims = 0
        self.flushes = 0
        self.promotes = 0
        self._specs: dict[tuple[str, str, int | None], MappingSpec] = {}
        self._loading: dict[tuple[str, str, int | None], asyncio.Future[MappingSpec]] = {}
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
        self._lanes = [
            asyncio.create_task(self._lane(), name=f"lane-{i}") for i in range(self.concurrency)
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
                    "claims": self.claims,
                    "flushes": self.flushes,
                    "promotes": self.promotes,
                },
            )

    async def _drain(self, claimer: asyncio.Task[None]) -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await claimer
        # Lanes finish the job they are on and stop; queued jobs are never started (the
        # lease release below hands them back with their attempt refunded).
        self._unpark(len(self._parked))
        unfinished = self._dispatching + len(self._queue)
        if unfinished:
            log.info(
                "draining in-flight deliveries",
                extra={"action": "draining", "worker": self.id, "in_flight": unfinished},
            )
        if self._lanes:
            _, late = await asyncio.wait(self._lanes, timeout=self.settings.shutdown_grace_s)
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
        # Claims run as tasks, up to CLAIMS_IN_FLIGHT at once: lanes that free up while a
        # claim is on its way start the next one instead of idling behind it. A claim only
        # ever asks for lanes that are free and not promised to a claim in flight, so no job
        # waits in the worker for a lane.
        claims: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                await self._promote_if_due()
                wait = self._claim_retry_at - time.monotonic()
                if wait > 0:
                    await self._sleep(wait)
                    continue
                if self._drained:
                    # The last claim came back short: nothing more is due for now.
                    self._drained = False
                    await self._sleep(self._idle_wait())
                    continue
                free = self._free_lanes() - self._claiming
                if free < self._claim_min or len(claims) >= CLAIMS_IN_FLIGHT:
                    # Busy: wait until enough lanes free up for a worthwhile batch.
                    await self._sleep(self._idle_wait())
                    continue
                want = min(self.batch_size, free)
                self._claiming += want
                task = asyncio.create_task(self._claim_batch(want), name="claim-batch")
                claims.add(task)
                task.add_done_callback(claims.discard)
        finally:
            if claims:
                await asyncio.wait(claims)

    async def _claim_batch(self, want: int) -> None:
        try:
            jobs = await self._claim(want)
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "claim failed: %s",
                type(exc).__name__,
                extra={"action": "claim_failed", "worker": self.id},
            )
            self._claim_retry_at = time.monotonic() + self.settings.poll_interval_s
            return
        finally:
            self._claiming -= want
            self._wake.set()
        if jobs:
            self.claims += 1
            self.in_flight += len(jobs)
            self._held.update(job.id for job in jobs)
            self._queue.extend(jobs)
            self._unpark(len(jobs))
        if len(jobs) < want:
            self._drained = True

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
        self.promotes += 1
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
        # asyncio.timeout, not wait_for: no task per sleep (the claimer sleeps once per batch).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    # --- dispatching ---------------------------------------------------------------------

    def _unpark(self, n: int) -> None:
        parked = self._parked
        while n > 0 and parked:
            fut = parked.pop()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    async def _lane(self) -> None:
        """One dispatch slot: takes queued jobs one at a time until stopping."""
        queue = self._queue
        loop = asyncio.get_running_loop()
        while not self.stopping:
            if not queue:
                fut: asyncio.Future[None] = loop.create_future()
                self._parked.append(fut)
                await fut
                continue
            job = queue.popleft()
            self._dispatching += 1
            try:
                await self._process(job)
            except Exception:
                # A bug must not cost the lane. The row is let go (no more lease extensions):
                # its lease runs out and the rescue makes it claimable again.
                log.exception("dispatch failed", extra={"action": "dispatch_error", "job": job.id})
                self._held.discard(job.id)
                self.in_flight -= 1
            finally:
                self._dispatching -= 1
            if self._free_lanes() >= self._claim_min:
                self._wake.set()

    async def _data_for(self, job: Job) -> dict[str, Any]:
        # Specs are immutable per version: after the first delivery of a (type, destination,
        # version) the render needs no await.
        key = (job.type, job.destination, job.mapping_version)
        spec = self._specs.get(key)
        if spec is None:
            spec = await self._load_spec(key)
        return render(spec, job.payload, meta_of(job))

    async def _load_spec(self, key: tuple[str, str, int | None]) -> MappingSpec:
        # One query per spec however many lanes miss it at once (a whole batch does, at start).
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self.renderer.spec_for(*key))
            loading.add_done_callback(lambda _f: self._loading.pop(key, None))
        # Shielded: a lane cancelled at shutdown must not cancel the others' load.
        spec = await asyncio.shield(loading)
        self._specs[key] = spec
        return spec

    async def _process(self, job: Job) -> None:
        try:
            data = await self._data_for(job)
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
        if result.ok:
            outcome = Outcome(job=job, status="delivered", result=result)
        else:
            policy = self.policies.get(job.destination, self.default_policy)
            decision = decide(
                attempt=job.attempt,
                max_attempts=job.max_attempts or policy.max_attempts,
                result=result,
                policy=policy,
            )
            outcome = Outcome(
                job=job, status=decision.status, result=result, delay_s=decision.delay_s
            )
        self._outcomes.append(outcome)
        self._outcomes_ready.set()

    def _free_lanes(self) -> int:
        """Lanes with nothing to do, as far as a claim may fill them. A finished delivery's
        lane is free at once, while its outcome waits for the flusher: the next claim overlaps
        that flush instead of queueing behind it. The rows held unrecorded stay bounded all the
        same (at most twice the concurrency) if the flushes fall behind."""
        busy = self._dispatching + len(self._queue)
        return min(self.concurrency - busy, 2 * self.concurrency - self.in_flight)

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
        self.flushes += 1
        try:
            kept, unblocks = await self.store.finish_outcomes(worker=self.id, outcomes=batch)
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
        held = self._held
        recorded: list[Outcome] = []
        delivered: dict[str, int] = {}
        # Per-delivery lines are DEBUG unless LOG_DELIVERED=each: skip building them at all.
        log_delivered = self._log_each or log.isEnabledFor(logging.DEBUG)
        now = time.monotonic()
        for outcome in batch:
            job = outcome.job
            held.discard(job.id)
            if job.id not in kept:
                self._log_outcome(outcome, lease_held=False)
                continue
            recorded.append(outcome)
            status = outcome.status
            if status == "delivered":
                delivered[job.destination] = delivered.get(job.destination, 0) + 1
                if log_delivered:
                    self._log_outcome(outcome, lease_held=True)
            else:
                self._log_outcome(outcome, lease_held=True)
            if status == "pending" and len(self._retry_times) < MAX_RETRY_TIMERS:
                heapq.heappush(self._retry_times, now + outcome.delay_s)
        if unblocks:
            self._next_promote = 0.0  # the next delivery of a finished key may go now
        metrics.observe_outcomes(recorded, datetime.now(UTC))
        if not self._log_each:
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
        await self._record_breakers(tally(recorded))
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
                async for queue in listen(self.listen_dsn, on_ready=self._on_listening):
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
