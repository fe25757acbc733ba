"""Runners for scheduled jobs. Each is an adapter for the destination of the same name, so a
job is claimed, retried, dead-lettered and logged like any delivery. Unlike the destination
adapters, job runners work on our own database, through the store."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from . import alerts, ops, syncs
from .records import Job, SendResult
from .settings import Settings
from .store import Store

JobFn = Callable[[Store, Settings, dict[str, Any]], Awaitable[dict[str, Any]]]

log = logging.getLogger(__name__)

# Bounded work per run: a huge backlog is worked off over several slots, never in one lock.
RETENTION_MAX_BATCHES = 200


async def retention(store: Store, settings: Settings, payload: dict[str, Any]) -> dict[str, Any]:
    day_s = 86400.0
    plan = (
        ("delivered", settings.retention_delivered_days * day_s),
        ("archived", settings.retention_archived_days * day_s),
        ("events", settings.retention_events_days * day_s),
    )
    removed: dict[str, Any] = {}
    for what, older_than_s in plan:
        total = 0
        for _ in range(RETENTION_MAX_BATCHES):
            n = await store.retention_delete(
                what, older_than_s=older_than_s, batch=settings.retention_batch
            )
            total += n
            if n < settings.retention_batch:
                break
        removed[what] = total
    # Housekeeping of the ingress tables: idle rate-limit buckets, and WhatsApp statuses that
    # arrived before their send was recorded (applied when the delivery shows up, else dropped).
    removed["rate_limits"] = await store.prune_rate_limits()
    applied, dropped = await store.reconcile_channel_statuses()
    removed["channel_statuses_applied"] = applied
    removed["channel_statuses_dropped"] = dropped
    removed["status_minutes"] = await store.status_prune(older_than_s=ops.ROLLUP_KEEP_S)
    return removed


async def alerts_and_rollup(
    store: Store, settings: Settings, payload: dict[str, Any]
) -> dict[str, Any]:
    """The every-minute alerts job also rolls up the minute that just closed, so /status
    and the dashboard find it counted. A failed rollup costs /status time, not correctness
    (readers count a missing minute from the indexes): it must not fail, and so repeat, the
    alerts."""
    result = await alerts.run(store, settings, payload)
    try:
        result["status_minutes_rolled"] = await ops.rollup(store)
    except psycopg.Error as exc:
        log.warning("status rollup failed: %s: %s", type(exc).__name__, exc)
    return result


JOBS: dict[str, JobFn] = {
    "retention": retention,
    "alerts": alerts_and_rollup,
    # Business flows (issue 5): the scheduled syncs.
    syncs.CRM_JOB: syncs.sync_crm_to_operacao,
    syncs.FINANCEIRO_JOB: syncs.sync_operacao_to_financeiro,
}


class JobAdapter:
    def __init__(self, name: str, fn: JobFn, store: Store, settings: Settings) -> None:
        self.name = name
        self.fn = fn
        self.store = store
        self.settings = settings

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult:
        started = time.perf_counter()
        try:
            result = await self.fn(self.store, self.settings, data)
        except Exception as exc:  # a failed run is retried like any delivery
            return SendResult(
                ok=False,
                error=f"job {self.name} failed: {type(exc).__name__}: {exc}",
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        return SendResult(
            ok=True,
            response=str(result),
            request_summary=f"job {self.name}",
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        """Nothing to release."""


def build_job_adapters(store: Store, settings: Settings) -> dict[str, JobAdapter]:
    return {name: JobAdapter(name, fn, store, settings) for name, fn in JOBS.items()}
