"""`carinho-scheduler`: APScheduler only *enqueues* periodic jobs as outbox rows.

Each firing inserts an event `job.<name>` with idempotency key `<name>@<slot>`, where the slot
is the cron fire time. Cron slots are aligned to the wall clock, so every scheduler computes
the same key for the same slot and the unique (source, idempotency_key) constraint lets exactly
one insert through, however many schedulers run.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from .embedded_pg import resolve_dsn
from .logs import setup_logging
from .migrate import MigrationError, ensure_current
from .settings import Settings, load_settings, sql_dir
from .store import Store, make_pool
from .syncs import CRM_JOB, FINANCEIRO_JOB

log = logging.getLogger("carinho_outbox.scheduler")

SOURCE = "scheduler"


@dataclass(frozen=True)
class Periodic:
    name: str
    cron: str


def periodic_jobs(settings: Settings) -> list[Periodic]:
    jobs = [
        Periodic("retention", settings.retention_cron),
        Periodic("alerts", settings.alerts_cron),
    ]
    # The syncs (issue 5) are enqueued only once the APIs they call are configured.
    if settings.crm_api_url and settings.operacao_api_url:
        jobs.append(Periodic(CRM_JOB, settings.sync_crm_cron))
    if settings.operacao_api_url and settings.financeiro_api_url:
        jobs.append(Periodic(FINANCEIRO_JOB, settings.sync_financeiro_cron))
    return jobs


def slot_key(name: str, slot: datetime) -> str:
    return f"{name}@{slot.astimezone(UTC).replace(microsecond=0).isoformat()}"


async def enqueue_slot(store: Store, name: str, slot: datetime) -> bool:
    """Insert the job row for this slot; False when another scheduler already did."""
    _, _, duplicate = await store.ingest_event(
        type=f"job.{name}",
        source=SOURCE,
        payload={"job": name, "slot": slot.astimezone(UTC).isoformat()},
        idempotency_key=slot_key(name, slot),
        occurred_at=slot,
        request_id=None,
        client="carinho-scheduler",
    )
    log.info(
        "job slot enqueued" if not duplicate else "job slot already enqueued",
        extra={
            "action": "job_enqueued" if not duplicate else "job_duplicate",
            "job": name,
            "slot": slot.isoformat(),
        },
    )
    return not duplicate


FEEDBACK_ROUTES = (("service.completed", "whatsapp"), ("service.completed", "email"))


async def apply_feedback_delay(store: Store, settings: Settings) -> list[tuple[str, str]]:
    """Write FEEDBACK_DELAY_S (when set) to the feedback routes that differ; routes_history
    records it. Unset, the table keeps whatever the migration or an operator put there."""
    if settings.feedback_delay_s is None:
        return []
    changed: list[tuple[str, str]] = []
    for event_type, destination in FEEDBACK_ROUTES:
        route = await store.route(event_type=event_type, destination=destination)
        if route is not None and route["delay_s"] != settings.feedback_delay_s:
            await store.set_route(
                event_type=event_type,
                destination=destination,
                actor="settings:FEEDBACK_DELAY_S",
                delay_s=settings.feedback_delay_s,
            )
            changed.append((event_type, destination))
    return changed


def build_scheduler(settings: Settings, store: Store) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=UTC)
    for job in periodic_jobs(settings):
        trigger = CronTrigger.from_crontab(job.cron, timezone=UTC)

        async def fire(name: str = job.name) -> None:
            # Cron fires on whole minutes, the same minute in every scheduler: the minute is
            # the slot. (A run more than 59 s late is a misfire and is skipped, not shifted.)
            slot = datetime.now(UTC).replace(second=0, microsecond=0)
            try:
                await enqueue_slot(store, name, slot)
            except Exception as exc:  # the next slot will try again; never kill the scheduler
                log.warning(
                    "could not enqueue %s: %s",
                    name,
                    type(exc).__name__,
                    extra={"action": "job_enqueue_failed", "job": name},
                )

        scheduler.add_job(
            fire, trigger, id=job.name, misfire_grace_time=59, coalesce=True, max_instances=1
        )
    return scheduler


async def run_scheduler(settings: Settings, dsn: str, stop: asyncio.Event) -> None:
    pool = make_pool(
        dsn, max_size=2, timeout_s=settings.db_pool_timeout_s, name="carinho-scheduler"
    )
    await pool.open(wait=False)
    store = Store(pool)
    try:
        await apply_feedback_delay(store, settings)
    except Exception as exc:  # the scheduler's own job matters more; retried at next start
        log.warning("could not apply FEEDBACK_DELAY_S: %s", type(exc).__name__)
    scheduler = build_scheduler(settings, store)
    scheduler.start()
    log.info(
        "scheduler started",
        extra={"action": "scheduler_started", "jobs": [j.name for j in periodic_jobs(settings)]},
    )
    try:
        await stop.wait()
    finally:
        scheduler.shutdown(wait=False)
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level, "scheduler")
    dsn, _server = resolve_dsn(settings.database_url, settings.pgdata_dir)
    try:
        ensure_current(dsn, sql_dir(settings))
    except MigrationError as exc:
        print(f"carinho-scheduler: {exc}", file=sys.stderr)
        sys.exit(2)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_scheduler(settings, dsn, stop)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
