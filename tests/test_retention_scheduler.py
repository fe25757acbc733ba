"""Periodic work as rows: slot keys make N schedulers enqueue once; retention removes only
what is finished and old, in batches."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg

from carinho_outbox.jobs import retention
from carinho_outbox.scheduler import enqueue_slot
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, running_worker


async def test_several_schedulers_enqueue_each_slot_once(
    store: Store, db: psycopg.Connection
) -> None:
    slot = datetime(2026, 11, 29, 17, 10, tzinfo=UTC)
    results = await asyncio.gather(*(enqueue_slot(store, "retention", slot) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    rows = db.execute(
        "select e.type, e.source, e.idempotency_key, d.destination, d.queue from events e "
        "join deliveries d on d.event_id = e.id").fetchall()
    assert rows == [("job.retention", "scheduler", "retention@2026-11-29T17:10:00+00:00",
                     "retention", "low")]
    await enqueue_slot(store, "retention", slot.replace(minute=20))
    assert db.execute("select count(*) from events").fetchone() == (2,)


async def test_retention_job_runs_through_a_worker(
    dsn: str, store: Store, db: psycopg.Connection
) -> None:
    await enqueue_slot(store, "retention", datetime.now(UTC).replace(second=0, microsecond=0))
    async with running_worker(make_settings(), store, dsn):
        await eventually(lambda: db.execute(
            "select status from deliveries where destination = 'retention'").fetchone()
            == ("delivered",))
    attempt = db.execute("select outcome, response_body from webhook_deliveries").fetchone()
    assert attempt is not None and attempt[0] == "delivered" and "delivered" in attempt[1]


def seed(db: psycopg.Connection) -> dict[str, int]:
    """One event per case; ages relative to now."""
    ids: dict[str, int] = {}
    cases = {
        "old_delivered": ("delivered", "10 days", None),
        "new_delivered": ("delivered", "1 day", None),
        "old_dead": ("dead", "40 days", None),
        "old_archived": ("archived", "40 days", "40 days"),
        "new_archived": ("archived", "40 days", "1 day"),
        "old_pending": ("pending", "40 days", None),
    }
    for name, (status, age, archived_age) in cases.items():
        row = db.execute(
            """
            with ev as (insert into events (type, source, payload, received_at)
                        values ('invoice.created', 'financeiro', '{}', now() - %(age)s::interval)
                        returning id)
            insert into deliveries (event_id, destination, status, finished_at, dead_at,
                                    archived_at)
            select id, 'crm', %(status)s,
                   case when %(status)s in ('delivered', 'dead') then now() - %(age)s::interval end,
                   case when %(status)s = 'dead' then now() - %(age)s::interval end,
                   now() - %(archived)s::interval
            from ev returning id
            """,
            {"age": age, "status": status, "archived": archived_age},
        ).fetchone()
        assert row is not None
        ids[name] = row[0]
        db.execute("insert into webhook_deliveries (delivery_id, attempt, destination, outcome) "
                   "values (%s, 1, 'crm', 'retry')", (row[0],))
    return ids


async def test_retention_removes_only_finished_and_old_rows(
    store: Store, db: psycopg.Connection
) -> None:
    ids = seed(db)
    settings = make_settings(RETENTION_DELIVERED_DAYS="7", RETENTION_ARCHIVED_DAYS="30",
                             RETENTION_EVENTS_DAYS="30", RETENTION_BATCH="1")
    removed = await retention(store, settings, {})
    assert removed["delivered"] == 1 and removed["archived"] == 1
    left = {r[0] for r in db.execute("select id from deliveries")}
    assert left == {ids[k] for k in ("new_delivered", "old_dead", "new_archived", "old_pending")}
    # Attempts went with their delivery; events with no delivery left and past retention went.
    assert db.execute("select count(*) from webhook_deliveries").fetchone() == (4,)
    # Only old_archived's event is both past 30 days and left without deliveries;
    # old_delivered's event (10 days) stays although its delivery went.
    assert removed["events"] == 1
    assert db.execute("select count(*) from events").fetchone() == (5,)
