"""The /status throughput rollup (sql/0011): per-minute rows counted once for closed minutes,
read with the open minute and window edges counted from the indexes, and equal to a plain
count; and the event type carried on the delivery row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from carinho_outbox import ops
from carinho_outbox.jobs import alerts_and_rollup, retention
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.ops import add_delivery, add_event

WINDOWS = (1, 5, 15, 60)
# Seconds ago, spread over 70 minutes, none within 6 s of a window's edge: the test reads the
# report and the plain counts a moment apart, and no row may cross an edge in between.
OFFSETS = [s for s in range(3, 70 * 60, 17) if all(abs(s - 60 * w) > 6 for w in WINDOWS)]
ROUTED = ("crm", "operacao", "financeiro")


def seed(db: psycopg.Connection) -> None:
    """Events received at every offset; deliveries finished at every other one (to three routed
    destinations and one without a route); failed and successful attempts at others."""
    # The deliveries hang off an event received two hours ago, outside every window.
    anchor = add_event(db, "lead.created", received_ago_s=7200)
    db.execute(
        "insert into events (type, source, payload, received_at)"
        " select 'lead.created', 'site', '{}', now() - make_interval(secs => o)"
        " from unnest(%s::int[]) o",
        (OFFSETS,),
    )
    dests = [*ROUTED, "ghost"]
    db.execute(
        """
        insert into deliveries (event_id, destination, status, attempts, finished_at, created_at)
        select %s, (%s::text[])[1 + i %% 4], 'delivered', 1,
               now() - make_interval(secs => o), now() - make_interval(secs => o + 1)
        from unnest(%s::int[]) with ordinality as x(o, i)
        """,
        (anchor, dests, OFFSETS[::2]),
    )
    holder = add_delivery(db, anchor, "crm", "delivered", ago_s=7000)
    db.execute(
        """
        insert into webhook_deliveries (delivery_id, attempt, destination, outcome, created_at)
        select %s, 1, 'crm', (array['retry', 'dead', 'delivered'])[1 + i %% 3],
               now() - make_interval(secs => o)
        from unnest(%s::int[]) with ordinality as x(o, i)
        """,
        (holder, OFFSETS[1::2]),
    )


def direct(db: psycopg.Connection) -> dict[str, Any]:
    """The same figures by plain counts over the whole tables."""
    out: dict[str, Any] = {}
    for w in WINDOWS:
        row = db.execute(
            """
            select (select count(*) from events
                     where received_at >= now() - %(w)s * interval '1 minute'),
                   (select count(*) from deliveries where status = 'delivered'
                     and finished_at >= now() - %(w)s * interval '1 minute'),
                   (select count(*) from webhook_deliveries where outcome in ('retry', 'dead')
                     and created_at >= now() - %(w)s * interval '1 minute')
            """,
            {"w": w},
        ).fetchone()
        assert row is not None
        out[f"{w}m"] = {"received": row[0], "delivered": row[1], "failed": row[2]}
    by_dest = db.execute(
        "select destination, count(*) from deliveries where status = 'delivered'"
        " and finished_at >= now() - interval '1 hour'"
        " and destination in (select destination from routes) group by 1"
    ).fetchall()
    out["by_destination"] = dict(by_dest)
    return out


async def report(store: Store) -> dict[str, Any]:
    return await ops.status_report(store, make_settings(), set(ROUTED))


async def test_rolled_up_throughput_equals_a_direct_count(
    store: Store, db: psycopg.Connection
) -> None:
    seed(db)
    s = await report(store)
    expect = direct(db)
    assert {w: s["throughput"][w] for w in ("1m", "5m", "15m", "60m")} == {
        w: expect[w] for w in ("1m", "5m", "15m", "60m")
    }
    assert s["delivered_1h_by_destination"] == expect["by_destination"]
    assert s["totals"]["delivered_1h"] == sum(expect["by_destination"].values())
    # The seed really spreads over the windows (the comparison above is not of zeros).
    assert 0 < expect["1m"]["received"] < expect["5m"]["received"] < expect["60m"]["received"]
    assert 0 < expect["1m"]["failed"] < expect["15m"]["failed"] < expect["60m"]["failed"]
    assert set(expect["by_destination"]) == set(ROUTED)
    # The closed minutes of the hour were rolled up, and each row holds that minute's count.
    rows = db.execute(
        "select s.minute, s.received, s.delivered, s.failed,"
        " (select count(*) from events e where e.received_at >= s.minute"
        "   and e.received_at < s.minute + interval '1 minute'),"
        " (select count(*) from deliveries d where d.status = 'delivered'"
        "   and d.finished_at >= s.minute and d.finished_at < s.minute + interval '1 minute'),"
        " (select count(*) from webhook_deliveries x where x.outcome in ('retry', 'dead')"
        "   and x.created_at >= s.minute and x.created_at < s.minute + interval '1 minute')"
        " from status_minutes s"
    ).fetchall()
    assert len(rows) >= 58
    assert all(r[1:4] == r[4:7] for r in rows), [r for r in rows if r[1:4] != r[4:7]]
    assert sum(r[1] for r in rows) > 0


async def test_the_report_reads_closed_minutes_from_the_rollup(
    store: Store, db: psycopg.Connection
) -> None:
    seed(db)
    before = await report(store)
    # Tamper with a minute 30 minutes ago: if the figures come from the rollup, they move.
    changed = db.execute(
        "update status_minutes set received = received + 1000, delivered = delivered + 100,"
        " failed = failed + 10,"
        " delivered_by = jsonb_set(delivered_by, '{operacao}',"
        "   to_jsonb(coalesce((delivered_by ->> 'operacao')::int, 0) + 100))"
        " where minute = date_trunc('minute', now()) - interval '30 minutes'"
    ).rowcount
    assert changed == 1
    after = await report(store)
    for w, (received, delivered, failed) in {
        "1m": (0, 0, 0),
        "5m": (0, 0, 0),
        "15m": (0, 0, 0),
        "60m": (1000, 100, 10),
    }.items():
        assert after["throughput"][w] == {
            "received": before["throughput"][w]["received"] + received,
            "delivered": before["throughput"][w]["delivered"] + delivered,
            "failed": before["throughput"][w]["failed"] + failed,
        }, w
    assert (
        after["delivered_1h_by_destination"]["operacao"]
        == before["delivered_1h_by_destination"]["operacao"] + 100
    )


async def test_a_minute_is_rolled_up_once(store: Store, db: psycopg.Connection) -> None:
    seed(db)
    first = await store.status_rollup(settle_s=ops.ROLLUP_SETTLE_S)
    assert first >= 58
    again = await store.status_rollup(settle_s=ops.ROLLUP_SETTLE_S)
    # Nothing new to roll unless a minute closed in between.
    assert again <= 1
    dupes = db.execute("select count(*) - count(distinct minute) from status_minutes").fetchone()
    assert dupes == (0,)
    one = await report(store)
    two = await report(store)
    assert one["throughput"] == two["throughput"]
    assert one["throughput"]["60m"] == direct(db)["60m"]


async def test_a_missing_minute_is_counted_from_the_indexes(
    store: Store, db: psycopg.Connection
) -> None:
    seed(db)
    await store.status_rollup(settle_s=ops.ROLLUP_SETTLE_S)
    # A hole in the rollup (a failed run, a pruned row): the readers fall back to the tables.
    db.execute(
        "delete from status_minutes"
        " where minute in (date_trunc('minute', now()) - interval '20 minutes',"
        "                  date_trunc('minute', now()) - interval '40 minutes')"
    )
    s = await store.ops_throughput(settle_s=ops.ROLLUP_SETTLE_S)
    by_dest = await store.ops_delivered_by_destination(settle_s=ops.ROLLUP_SETTLE_S)
    expect = direct(db)
    for w in WINDOWS:
        assert {k: s[f"{k}_{w}m"] for k in ("received", "delivered", "failed")} == expect[f"{w}m"]
    assert by_dest == expect["by_destination"]


@pytest.mark.parametrize("settle_s", [0.0, 15.0, 75.0, 250.0])
async def test_any_cut_between_rollup_and_indexes_counts_each_row_once(
    store: Store, db: psycopg.Connection, settle_s: float
) -> None:
    # The readers' settle time decides where whole closed minutes end and the index-counted
    # tail starts. Longer than a window (75 s for 1 minute, 250 s for 5), the window has no
    # whole minute at all; shorter than the rollup's, the latest closed minutes are not rolled
    # up yet. Every cut must give the plain count.
    seed(db)
    await store.status_rollup(settle_s=ops.ROLLUP_SETTLE_S)
    s = await store.ops_throughput(settle_s=settle_s)
    by_dest = await store.ops_delivered_by_destination(settle_s=settle_s)
    expect = direct(db)
    for w in WINDOWS:
        assert {k: s[f"{k}_{w}m"] for k in ("received", "delivered", "failed")} == expect[f"{w}m"]
    assert by_dest == expect["by_destination"]


async def test_the_open_minute_is_counted(store: Store, db: psycopg.Connection) -> None:
    ev = add_event(db, "lead.created")
    dl = add_delivery(db, ev, "crm", "delivered")
    db.execute(
        "insert into webhook_deliveries (delivery_id, attempt, destination, outcome)"
        " values (%s, 1, 'crm', 'retry')",
        (dl,),
    )
    s = await report(store)
    assert s["throughput"]["1m"] == {"received": 1, "delivered": 1, "failed": 1}
    assert s["throughput"]["60m"] == {"received": 1, "delivered": 1, "failed": 1}
    assert s["delivered_1h_by_destination"] == {"crm": 1}
    # The minute still open (or ended less than the settle time ago) has no rollup row.
    row = db.execute(
        "select count(*) from status_minutes"
        " where minute >= date_trunc('minute', now() - make_interval(secs => %s))",
        (ops.ROLLUP_SETTLE_S,),
    ).fetchone()
    assert row == (0,)
    series = await store.ops_series()
    assert len(series) == 60
    assert (series[-1]["received"], series[-1]["delivered"], series[-1]["failed"]) in {
        (1, 1, 1),
        (0, 0, 0),  # the rows landed in the previous minute, a moment before it ended
    }
    assert sum(p["received"] for p in series) == 1


async def test_dashboard_series_matches_a_direct_count(
    store: Store, db: psycopg.Connection
) -> None:
    seed(db)
    await store.status_rollup(settle_s=ops.ROLLUP_SETTLE_S)
    series = await store.ops_series()
    rows = db.execute(
        """
        select m.minute,
               (select count(*) from events where received_at >= m.minute
                  and received_at < m.minute + interval '1 minute'),
               (select count(*) from deliveries where status = 'delivered'
                  and finished_at >= m.minute and finished_at < m.minute + interval '1 minute'),
               (select count(*) from webhook_deliveries where outcome in ('retry', 'dead')
                  and created_at >= m.minute and created_at < m.minute + interval '1 minute')
        from unnest(%s::timestamptz[]) as m(minute)
        """,
        ([p["minute"] for p in series],),
    ).fetchall()
    assert [(p["minute"], p["received"], p["delivered"], p["failed"]) for p in series] == rows
    assert sum(p["received"] for p in series) > 100


async def test_retention_prunes_rollup_rows_past_two_hours(
    store: Store, db: psycopg.Connection
) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for age in (timedelta(hours=3), timedelta(minutes=150), timedelta(minutes=90)):
        db.execute(
            "insert into status_minutes (minute, received, delivered, failed) values (%s, 1, 1, 0)",
            (now - age,),
        )
    removed = await retention(store, make_settings(), {})
    assert removed["status_minutes"] == 2
    left = db.execute("select minute from status_minutes").fetchall()
    assert left == [(now - timedelta(minutes=90),)]


async def test_the_alerts_job_keeps_the_rollup_warm(store: Store, db: psycopg.Connection) -> None:
    seed(db)
    slot = datetime.now(UTC).replace(second=0, microsecond=0)
    result = await alerts_and_rollup(store, make_settings(), {"slot": slot.isoformat()})
    assert result["status_minutes_rolled"] >= 58
    row = db.execute("select count(*), sum(received) from status_minutes").fetchone()
    assert row is not None and row[0] == result["status_minutes_rolled"] and row[1] > 0


async def test_deliveries_carry_their_event_type(store: Store, db: psycopg.Connection) -> None:
    # Written by a statement that leaves the type out: the trigger looks it up.
    direct_id = add_delivery(db, add_event(db, "service.scheduled"), "operacao", "pending")
    # Written by the ingress statement, which writes it itself.
    event_id, dests, _ = await store.ingest_event(
        type="lead.created",
        source="site",
        payload={"name": "Maria", "phone": "+5541999990000"},
        idempotency_key=None,
        occurred_at=None,
        request_id=None,
        client=None,
    )
    assert dests
    rows = db.execute(
        "select d.id = %s, d.event_type, e.type from deliveries d join events e"
        " on e.id = d.event_id",
        (direct_id,),
    ).fetchall()
    assert (True, "service.scheduled", "service.scheduled") in rows
    ingested = [r for r in rows if not r[0]]
    assert len(ingested) == len(dests)
    assert all(r[1] == r[2] == "lead.created" for r in ingested)
    # An explicit type is kept as given.
    ev = add_event(db, "lead.created")
    db.execute(
        "insert into deliveries (event_id, destination, event_type) values (%s, 'crm', 'x.y')",
        (ev,),
    )
    kept = db.execute("select event_type from deliveries where event_id = %s", (ev,)).fetchone()
    assert kept == ("x.y",)
    assert str(event_id)
