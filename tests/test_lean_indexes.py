"""sql/0012: the indexes deliveries and webhook_deliveries keep, and the statements rewritten
for the ones dropped (the oldest pending row per destination, retention without the cascade)
answering exactly what the statements they replace answered."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import pytest

from carinho_outbox.queries import q
from carinho_outbox.store import Store
from tests.support.ops import add_attempt, add_delivery, add_event

DELIVERIES_INDEXES = {
    "deliveries_pkey",
    "deliveries_claim",
    "deliveries_claim_age",
    "deliveries_waiting",
    "deliveries_ordering",
    "deliveries_pending_dest",
    "deliveries_retrying",
    "deliveries_running_dest",
    "deliveries_event",
    "deliveries_dead",
    "deliveries_dead_type",
    "deliveries_external",
    "deliveries_finished",
    "deliveries_delivered_dest",
    "deliveries_archived",  # sql/0014
}
ATTEMPTS_INDEXES = {
    "webhook_deliveries_pkey",
    "webhook_deliveries_delivery",
    "webhook_deliveries_failed",
}
DROPPED = {"deliveries_pending_age", "deliveries_running", "webhook_deliveries_created"}

# The statements of 0011 that read deliveries_pending_age: the rewrites must answer the same.
OLD_OLDEST_BY_DESTINATION = """
select dest.name as destination,
       (select d.available_at from deliveries d
         where d.status = 'pending' and d.destination = dest.name
           and d.available_at <= now()
         order by d.available_at limit 1) as oldest_due
from unnest(%(destinations)s::text[]) as dest(name)
order by 1
"""
OLD_ALERT_OLDEST_PENDING = """
select min(p.available_at) as oldest_due
from unnest(%(destinations)s::text[]) as dest(name)
cross join lateral (
    select d.available_at from deliveries d
    where d.status = 'pending' and d.destination = dest.name and d.available_at <= now()
    order by d.available_at
    limit 1
) p
"""


def _names(db: psycopg.Connection, table: str) -> set[str]:
    rows = db.execute("select indexname from pg_indexes where tablename = %s", (table,))
    return {r[0] for r in rows}


def test_index_set_after_migration(db: psycopg.Connection) -> None:
    assert _names(db, "deliveries") == DELIVERIES_INDEXES
    assert _names(db, "webhook_deliveries") == ATTEMPTS_INDEXES
    assert DROPPED.isdisjoint(_names(db, "deliveries") | _names(db, "webhook_deliveries"))
    running = db.execute(
        "select indexdef from pg_indexes where indexname = 'deliveries_running_dest'"
    ).fetchone()
    assert running is not None and "(destination) WHERE (status = 'running'::text)" in running[0]
    # Attempts keep no foreign key (retention deletes them); deliveries keep theirs to events.
    fks = dict(
        db.execute(
            "select conrelid::regclass::text, count(*) from pg_constraint"
            " where contype = 'f' and conrelid in ('deliveries'::regclass,"
            " 'webhook_deliveries'::regclass) group by 1"
        ).fetchall()
    )
    assert fks == {"deliveries": 1}


def _pending(
    db: psycopg.Connection,
    event: str,
    destination: str,
    priority: int,
    due_in_s: float,
    *,
    due: bool = True,
) -> int:
    row = db.execute(
        "insert into deliveries (event_id, destination, priority, available_at, due)"
        " values (%s, %s, %s, now() + make_interval(secs => %s), %s) returning id",
        (event, destination, priority, due_in_s, due),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _available_at(db: psycopg.Connection, delivery_id: int) -> datetime:
    row = db.execute("select available_at from deliveries where id = %s", (delivery_id,))
    got = row.fetchone()
    assert got is not None
    return got[0]  # type: ignore[no-any-return]


@pytest.fixture
def backlog(db: psycopg.Connection) -> dict[str, int]:
    """Pending rows over several priorities per destination: due, waiting (not due) and
    future ones, plus running and finished rows that must not count."""
    ev = add_event(db)
    ids = {
        # crm: the oldest row whose time has come is a waiting retry at the lowest priority.
        "crm_p50": _pending(db, ev, "crm", 50, -100),
        "crm_p20": _pending(db, ev, "crm", 20, -50),
        "crm_p100_waiting": _pending(db, ev, "crm", 100, -300, due=False),
        "crm_p20_future": _pending(db, ev, "crm", 20, 60),
        "crm_p10_future": _pending(db, ev, "crm", 10, 30),
        # operacao: pending, but nothing whose time has come.
        "operacao_future": _pending(db, ev, "operacao", 100, 30),
        # marketing: held (unconfigured), old.
        "marketing_old": _pending(db, ev, "marketing", 200, -5000),
        "marketing_p10": _pending(db, ev, "marketing", 10, -20),
    }
    add_delivery(db, ev, "financeiro", "delivered", ago_s=5)
    add_delivery(db, ev, "cuidadores", "running", attempts=1)
    add_delivery(db, ev, "cuidadores", "running", attempts=1)
    add_delivery(db, ev, "crm", "running", attempts=1)
    add_delivery(db, ev, "crm", "dead", attempts=3, ago_s=30)
    return ids


DESTINATIONS = ["crm", "operacao", "marketing", "financeiro", "cuidadores", "nowhere"]


def test_oldest_pending_per_destination_is_what_it_was(
    db: psycopg.Connection, backlog: dict[str, int]
) -> None:
    old = dict(db.execute(OLD_OLDEST_BY_DESTINATION, {"destinations": DESTINATIONS}).fetchall())
    rows = db.execute(q("ops_destinations"), {"destinations": DESTINATIONS}).fetchall()
    new = {r[0]: r[2] for r in rows if r[0] in DESTINATIONS}
    assert new == old
    assert new == {
        "crm": _available_at(db, backlog["crm_p100_waiting"]),
        "operacao": None,
        "marketing": _available_at(db, backlog["marketing_old"]),
        "financeiro": None,
        "cuidadores": None,
        "nowhere": None,
    }
    pending = {r[0]: r[1] for r in rows if r[0] in DESTINATIONS}
    assert pending == {
        "crm": 5,
        "operacao": 1,
        "marketing": 2,
        "financeiro": 0,
        "cuidadores": 0,
        "nowhere": 0,
    }


@pytest.mark.parametrize(
    "destinations",
    [["crm", "operacao"], ["operacao"], ["marketing", "crm"], ["nowhere"], [], ["crm", "crm"]],
)
def test_alert_oldest_pending_is_what_it_was(
    db: psycopg.Connection, backlog: dict[str, int], destinations: list[str]
) -> None:
    params: dict[str, Any] = {"destinations": destinations}
    old = db.execute(OLD_ALERT_OLDEST_PENDING, params).fetchone()
    new = db.execute(q("alert_oldest_pending"), params).fetchone()
    assert new == old
    expected = {
        ("crm", "operacao"): backlog["crm_p100_waiting"],
        ("marketing", "crm"): backlog["marketing_old"],
        ("crm", "crm"): backlog["crm_p100_waiting"],
    }.get(tuple(destinations))
    assert new == ((_available_at(db, expected) if expected else None),)


def test_running_counts_per_destination(db: psycopg.Connection, backlog: dict[str, int]) -> None:
    counts = {
        d: db.execute(q("count_running_destination"), {"destination": d}).fetchone()
        for d in ("crm", "cuidadores", "operacao")
    }
    assert counts == {"crm": (1,), "cuidadores": (2,), "operacao": (0,)}
    gauges = {
        (r[0], r[1]): r[2]
        for r in db.execute(q("ops_state_gauges")).fetchall()
        if r[0] == "running"
    }
    assert gauges == {("running", "crm"): 1, ("running", "cuidadores"): 2}


def _finished(
    db: psycopg.Connection, status: str, age: str, archived_age: str | None, attempts: int
) -> tuple[int, list[int]]:
    ev = add_event(db)
    row = db.execute(
        "insert into deliveries (event_id, destination, status, finished_at, dead_at,"
        " archived_at, attempts)"
        " values (%(ev)s, 'crm', %(status)s,"
        " case when %(status)s <> 'pending' then now() - %(age)s::interval end,"
        " case when %(status)s in ('dead', 'archived') then now() - %(age)s::interval end,"
        " now() - %(archived)s::interval, %(attempts)s) returning id",
        {"ev": ev, "status": status, "age": age, "archived": archived_age, "attempts": attempts},
    ).fetchone()
    assert row is not None
    delivery = int(row[0])
    for n in range(1, attempts + 1):
        add_attempt(db, delivery, n, "retry")
    got = db.execute(
        "select array_agg(id order by id) from webhook_deliveries where delivery_id = %s",
        (delivery,),
    ).fetchone()
    assert got is not None
    return delivery, list(got[0] or [])


async def test_retention_deletes_old_finished_rows_with_their_attempts_only(
    store: Store, db: psycopg.Connection
) -> None:
    rows = {
        "old_delivered_1": _finished(db, "delivered", "10 days", None, 3),
        "old_delivered_2": _finished(db, "delivered", "9 days", None, 2),
        "old_delivered_3": _finished(db, "delivered", "8 days", None, 1),
        "new_delivered": _finished(db, "delivered", "1 day", None, 2),
        "old_dead": _finished(db, "dead", "40 days", None, 3),
        "old_archived": _finished(db, "archived", "40 days", "40 days", 2),
        "new_archived": _finished(db, "archived", "40 days", "1 day", 1),
        "old_pending": _finished(db, "pending", "40 days", None, 1),
    }
    # A batch counts deliveries, not attempts: 2 of the 3 old ones (6 attempts among them at
    # most), then the last one.
    week, month = 7 * 86400.0, 30 * 86400.0
    first = await store.retention_delete("delivered", older_than_s=week, batch=2)
    second = await store.retention_delete("delivered", older_than_s=week, batch=2)
    third = await store.retention_delete("delivered", older_than_s=week, batch=2)
    assert (first, second, third) == (2, 1, 0)
    assert await store.retention_delete("archived", older_than_s=month, batch=5) == 1
    gone = {"old_delivered_1", "old_delivered_2", "old_delivered_3", "old_archived"}
    kept = set(rows) - gone
    left = {r[0] for r in db.execute("select id from deliveries")}
    assert left == {rows[k][0] for k in kept}
    attempts_left = {r[0] for r in db.execute("select id from webhook_deliveries")}
    assert attempts_left == {a for k in kept for a in rows[k][1]}
    orphans = db.execute(
        "select count(*) from webhook_deliveries w"
        " where not exists (select 1 from deliveries d where d.id = w.delivery_id)"
    ).fetchone()
    assert orphans == (0,)


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    out = [plan["Relation Name"]] if plan["Node Type"] == "Seq Scan" else []
    for child in plan.get("Plans", []):
        out.extend(_seq_scans(child))
    return out


BOTH = ("deliveries", "webhook_deliveries")
# Engine and retention statements whose index changed in 0012, with sample parameters, and the
# tables each must reach through an index (retention_archived through deliveries_archived,
# sql/0014; before it, a scan of deliveries every retention run).
ENGINE_QUERIES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "rescue_expired_leases": (
        {"worker": "w-9", "default_max_attempts": 5, "limit": 1000},
        BOTH,
    ),
    "count_running_destination": ({"destination": "crm"}, BOTH),
    "release_leases": ({"worker": "w-1"}, BOTH),
    "claim_destination": (
        {
            "worker": "w-9",
            "destination": "crm",
            "queues": ["default"],
            "probe": False,
            "limit": 10,
            "lease_s": 30.0,
        },
        BOTH,
    ),
    "alert_oldest_pending": ({"destinations": ["crm", "operacao"]}, BOTH),
    "retention_delivered": ({"older_than_s": 7 * 86400.0, "batch": 5000}, BOTH),
    "retention_archived": ({"older_than_s": 30 * 86400.0, "batch": 5000}, BOTH),
}


@pytest.mark.slow
def test_engine_and_retention_statements_use_indexes_with_100k_rows(
    db: psycopg.Connection,
) -> None:
    # 100k deliveries finished over the past few days (the most recent hours inside retention),
    # each with an attempt; a small live backlog and a few running rows.
    db.execute(
        """
        insert into events (type, source, payload, received_at)
        select 'lead.created', 'site', '{}'::jsonb, now() - g * interval '3 seconds'
        from generate_series(1, 100000) g
        """
    )
    db.execute(
        """
        insert into deliveries (event_id, destination, status, attempts, finished_at,
                                created_at, dead_at, archived_at)
        select id,
               (array['crm', 'operacao', 'marketing', 'financeiro'])[1 + (hashtext(id::text) & 3)],
               case when hashtext(id::text) % 500 = 0 then 'archived' else 'delivered' end, 1,
               received_at + interval '1 second', received_at,
               received_at + interval '1 second', received_at + interval '2 seconds'
        from events
        """
    )
    db.execute(
        """
        insert into webhook_deliveries (delivery_id, attempt, destination, outcome,
                                        response_status, duration_ms, created_at)
        select id, 1, destination, 'delivered', 200, 10, finished_at from deliveries
        """
    )
    ev = add_event(db)
    for n in range(20):
        add_delivery(db, ev, "crm", "pending", due_in_s=-n)
        add_delivery(db, ev, ("crm", "operacao")[n % 2], "running", attempts=1)
    db.execute("analyze")
    problems: list[str] = []
    with db.cursor() as cur:
        for name, (params, indexed) in ENGINE_QUERIES.items():
            cur.execute(b"explain (format json) " + q(name).as_bytes(cur), params)
            row = cur.fetchone()
            assert row is not None
            scans = _seq_scans(row[0][0]["Plan"])
            problems.extend(f"{name}: Seq Scan on {t}" for t in scans if t in indexed)
    assert problems == []
