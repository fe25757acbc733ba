"""What operators read: the detailed health check and /status, built through the store.

Shared by the web API, the dashboard and the CLI. Every figure comes from one of the named
queries of queries.sql (the "operating it" block), each bounded by a partial index or a time
window, so the whole report stays cheap however many finished rows the tables hold. The
last hour's throughput comes from per-minute rollup rows (sql/0011, `rollup` below) plus the
few minutes not rolled up, so a busy hour costs /status no more than a quiet one.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from .alerts import configured_destinations
from .migrate import MigrationError, check_checksums, discover
from .settings import Settings, sql_dir
from .store import Store

__all__ = ["configured_destinations", "dlq_stats", "health_report", "rollup", "status_report"]

# /status lag percentiles: the window and the most recent deliveries taken from it.
LAG_WINDOW_S = 900.0
LAG_SAMPLE = 10_000
# Throughput rollup (sql/0011): a minute is rolled up once it ended this long ago, when every
# row stamped within it (now() of a one-statement transaction) has committed; rollup rows are
# kept two hours (the windows reach back one).
ROLLUP_SETTLE_S = 15.0
ROLLUP_KEEP_S = 7200.0


async def rollup(store: Store) -> int:
    """Roll up the closed minutes of the last hour not rolled up yet. /status calls it
    before reading; the every-minute alerts job calls it so the rows are there already."""
    return await store.status_rollup(settle_s=ROLLUP_SETTLE_S)


def _age_s(at: datetime | None, now: datetime) -> float | None:
    if at is None:
        return None
    return round(max(0.0, (now - at).total_seconds()), 3)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


async def circuits(store: Store) -> dict[str, str] | None:
    """Circuit state per destination from destination_state, or None while it does not exist."""
    try:
        return await store.ops_circuits()
    except psycopg.errors.UndefinedTable:
        return None


async def health_report(
    store: Store, settings: Settings, configured: set[str]
) -> tuple[bool, dict[str, Any]]:
    """(healthy, body). Unhealthy means the hub cannot do its job: database unreachable,
    schema not current, or no live worker. Backlog figures are reported, not judged."""
    checks: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        await store.ping()
    except Exception as exc:  # unreachable is the answer here, not an error
        checks["database"] = {"ok": False, "error": type(exc).__name__}
        return False, {"status": "unavailable", "failing": ["database"], "checks": checks}
    checks["database"] = {
        "ok": True,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }

    try:
        applied = await store.applied_migrations()
        known = discover(sql_dir(settings))
        check_checksums(known, applied)
        missing = [m.path.name for m in known if m.version not in applied]
        checks["migrations"] = {
            "ok": not missing,
            "applied": len(applied),
            "pending": missing,
        }
    except MigrationError as exc:
        checks["migrations"] = {"ok": False, "error": str(exc)}

    now = datetime.now(UTC)
    workers = await store.list_workers(alive_within_s=settings.worker_dead_after_s)
    alive = [w for w in workers if w["alive"] and not w["stopping"]]
    checks["workers"] = {
        "ok": bool(alive),
        "alive": len(alive),
        "registered": len(workers),
        "dead_after_s": settings.worker_dead_after_s,
    }
    if not alive:
        checks["workers"]["error"] = "no worker has sent a heartbeat recently"

    rows = await store.ops_destinations(destinations=sorted(settings.destinations))
    circuit = await circuits(store)
    destinations: dict[str, dict[str, Any]] = {}
    oldest: datetime | None = None
    dlq_size = 0
    for r in rows:
        name = r["destination"]
        is_configured = name in configured
        entry: dict[str, Any] = {
            "configured": is_configured,
            "pending": r["pending"],
            "dead": r["dead"],
            "oldest_pending_age_s": _age_s(r["oldest_due"], now),
            "last_success_at": _iso(r["last_success"]),
        }
        if circuit is not None:
            entry["circuit"] = circuit.get(name, "closed")
        destinations[name] = entry
        dlq_size += r["dead"]
        # Held deliveries of unconfigured destinations are reported apart, not as lag.
        if is_configured and r["oldest_due"] is not None:
            oldest = r["oldest_due"] if oldest is None else min(oldest, r["oldest_due"])
    checks["backlog"] = {
        "ok": True,
        "oldest_pending_age_s": _age_s(oldest, now) or 0.0,
        "dlq_size": dlq_size,
        "held": {
            n: d["pending"] for n, d in destinations.items() if not d["configured"] and d["pending"]
        },
    }
    failing = [name for name, c in checks.items() if not c["ok"]]
    body = {
        "status": "ok" if not failing else "unavailable",
        "failing": failing,
        "checks": checks,
        "destinations": destinations,
    }
    return not failing, body


async def status_report(store: Store, settings: Settings, configured: set[str]) -> dict[str, Any]:
    started = time.perf_counter()
    now = datetime.now(UTC)
    # Three independent lanes on three pooled connections, so the report takes as long as the
    # longest: one pass over the open deliveries (it feeds counts, queues, retries, held and
    # oldest), the time figures (rollup first), and the DLQ ends, workers and circuits.
    open_rows, (delivered, t, lag), (dead_range, top, workers, states) = await asyncio.gather(
        store.ops_open_counts(), _time_figures(store), _dlq_and_workers(store, settings)
    )
    counts = _status_counts(open_rows)
    totals: dict[str, int] = {
        "pending": 0,
        "retrying": 0,
        "running": 0,
        "dead": 0,
        "delivered_1h": sum(delivered.values()),
    }
    for c in counts:
        totals[c["status"]] = totals.get(c["status"], 0) + c["count"]

    throughput = {
        f"{m}m": {
            "received": t[f"received_{m}m"],
            "delivered": t[f"delivered_{m}m"],
            "failed": t[f"failed_{m}m"],
        }
        for m in (1, 5, 15, 60)
    }

    by_attempt: dict[str, int] = {}
    retry_by_dest: dict[str, int] = {}
    retrying = (r for r in open_rows if r["status"] == "retrying")
    for r in sorted(retrying, key=lambda r: (r["destination"], r["attempts"])):
        by_attempt[str(r["attempts"])] = by_attempt.get(str(r["attempts"]), 0) + r["count"]
        retry_by_dest[r["destination"]] = retry_by_dest.get(r["destination"], 0) + r["count"]

    # The DLQ figures come from the dead arm of the counts above, not a second pass.
    dead_rows = [
        {"event_type": c["event_type"], "destination": c["destination"], "count": c["count"]}
        for c in counts
        if c["status"] == "dead"
    ]
    dlq = _dlq_summary(dead_rows, dead_range, top)
    oldest: datetime | None = None
    held_by: dict[str, int] = {}
    queue_by: dict[str, dict[str, Any]] = {}
    for r in open_rows:
        if r["status"] not in ("pending", "retrying"):
            continue
        q = queue_by.setdefault(r["queue"], {"queue": r["queue"], "pending": 0, "due": 0})
        q["pending"] += r["count"]
        q["due"] += r["due"]
        if r["destination"] not in configured:
            held_by[r["destination"]] = held_by.get(r["destination"], 0) + r["count"]
        elif r["oldest_due"] is not None:
            oldest = r["oldest_due"] if oldest is None else min(oldest, r["oldest_due"])
    held = [{"destination": d, "pending": n} for d, n in sorted(held_by.items())]
    queues = [queue_by[name] for name in sorted(queue_by)]
    return {
        "generated_at": now.isoformat(),
        "counts": counts,
        "totals": totals,
        "delivered_1h_by_destination": delivered,
        "throughput": throughput,
        "retry": {
            "waiting": sum(by_attempt.values()),
            "by_attempt": by_attempt,
            "by_destination": retry_by_dest,
        },
        "dlq": dlq,
        "lag": {
            "window_s": LAG_WINDOW_S,
            "samples": lag["samples"],
            "p50_s": _round(lag["p50_s"]),
            "p95_s": _round(lag["p95_s"]),
        },
        "oldest_pending_age_s": _age_s(oldest, now) or 0.0,
        "queues": queues,
        "held": held,
        # Circuit breaker per destination (closed / open / half_open), from destination_state.
        "circuits": states or {},
        "workers": {
            "alive": sum(1 for w in workers if w["alive"] and not w["stopping"]),
            "registered": len(workers),
            "list": [
                {
                    "id": w["id"],
                    "host": w["host"],
                    "pid": w["pid"],
                    "queues": list(w["queues"]),
                    "concurrency": w["concurrency"],
                    "in_flight": w["in_flight"],
                    "processed": w["processed"],
                    "alive": w["alive"],
                    "stopping": w["stopping"],
                    "last_seen_at": _iso(w["last_seen_at"]),
                    "started_at": _iso(w["started_at"]),
                }
                for w in workers
            ],
        },
        "took_ms": round((time.perf_counter() - started) * 1000, 2),
    }


async def _time_figures(
    store: Store,
) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
    await rollup(store)
    delivered = await store.ops_delivered_by_destination(settle_s=ROLLUP_SETTLE_S)
    throughput = await store.ops_throughput(settle_s=ROLLUP_SETTLE_S)
    lag = await store.ops_lag(window_s=LAG_WINDOW_S, sample=LAG_SAMPLE)
    return delivered, throughput, lag


async def _dlq_and_workers(
    store: Store, settings: Settings
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], dict[str, str] | None]:
    dead_range = await store.ops_dead_range()
    top = await _top_errors(store)
    workers = await store.list_workers(alive_within_s=settings.worker_dead_after_s)
    return dead_range, top, workers, await circuits(store)


def _status_counts(open_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Counts by (status, event type, destination), in that order."""
    merged: dict[tuple[str, str, str], int] = {}
    for r in open_rows:
        key = (r["status"], r["event_type"], r["destination"])
        merged[key] = merged.get(key, 0) + r["count"]
    return [
        {"status": k[0], "event_type": k[1], "destination": k[2], "count": n}
        for k, n in sorted(merged.items(), key=lambda kv: tuple(x or "" for x in kv[0]))
    ]


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


async def dlq_stats(store: Store) -> dict[str, Any]:
    rows = await store.dlq_stats()
    oldest = min((r["oldest_dead_at"] for r in rows if r["oldest_dead_at"]), default=None)
    newest = max((r["newest_dead_at"] for r in rows if r["newest_dead_at"]), default=None)
    ends = {"oldest_dead_at": oldest, "newest_dead_at": newest}
    return _dlq_summary(rows, ends, await _top_errors(store))


async def _top_errors(store: Store) -> list[dict[str, Any]]:
    """The five most common errors over the whole DLQ."""
    now = datetime.now(UTC)
    return await store.dlq_top_errors(since=now.replace(year=now.year - 100), until=now, limit=5)


def _dlq_summary(
    rows: list[dict[str, Any]], ends: dict[str, Any], top: list[dict[str, Any]]
) -> dict[str, Any]:
    by_type: dict[str, int] = {}
    by_dest: dict[str, int] = {}
    for r in rows:
        by_type[r["event_type"]] = by_type.get(r["event_type"], 0) + r["count"]
        by_dest[r["destination"]] = by_dest.get(r["destination"], 0) + r["count"]
    oldest, newest = ends["oldest_dead_at"], ends["newest_dead_at"]
    return {
        "size": sum(by_type.values()),
        "by_event_type": by_type,
        "by_destination": by_dest,
        "oldest_dead_at": _iso(oldest),
        "newest_dead_at": _iso(newest),
        "top_errors": [{"error": t["error"], "count": t["count"]} for t in top],
    }
