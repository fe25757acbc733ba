"""/status under a busy last hour and a big dead-letter queue (issues 6 and 7).

The fill: finished deliveries older than an hour (the history), deliveries finished within the
last hour with their events and attempts (the busy hour), dead letters with varied errors and a
live backlog. The recent rows are analyzed but not vacuumed, as right after heavy traffic.

Then `GET /status` through a real web process (median of 10 calls) and, in-process, the time
of each statement `status_report` runs (median of 10 reports) with its EXPLAIN ANALYZE saved.

Standalone: `python -m carinho_outbox.bench.status` (knobs BENCH_STATUS_OLD=1000000,
BENCH_STATUS_RECENT=300000, BENCH_STATUS_DEAD=20000, BENCH_STATUS_PENDING=50000). `make bench`
runs it as the `status` section.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ..ops import status_report
from ..queries import q
from ..settings import load_settings
from ..store import Store, make_pool
from . import statements as st
from .ceilings import fill_pending
from .common import (
    DESTINATIONS,
    EVENT_SOURCE,
    EVENT_TYPE,
    RESULTS_DIR,
    Figure,
    Receiver,
    find_server,
    log,
    median,
    scratch_db,
)

SAMPLES = 10


@dataclass
class Shape:
    old: int = 1_000_000
    recent: int = 300_000
    dead: int = 20_000
    pending: int = 50_000

    @classmethod
    def from_env(cls) -> Shape:
        def n(name: str, default: int) -> int:
            raw = os.environ.get(name, "")
            return int(raw) if raw.strip() else default

        d = cls()
        return cls(
            old=n("BENCH_STATUS_OLD", d.old),
            recent=n("BENCH_STATUS_RECENT", d.recent),
            dead=n("BENCH_STATUS_DEAD", d.dead),
            pending=n("BENCH_STATUS_PENDING", d.pending),
        )

    def label(self) -> str:
        return (
            f"{self.recent:,} delivered in the last hour, {self.dead:,} dead, "
            f"{self.pending:,} pending, {self.old:,} older"
        )


def fill(dsn: str, shape: Shape) -> dict[str, float]:
    timings: dict[str, float] = {}

    def step(conn: psycopg.Connection[Any], name: str, query: str, params: dict[str, Any]) -> None:
        t = time.monotonic()
        conn.execute(query, params)  # type: ignore[arg-type]
        timings[name] = round(time.monotonic() - t, 1)
        log(f"status: {name} filled in {timings[name]:.1f}s")

    dests = list(DESTINATIONS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(st.TRUNCATE_OUTBOX)
        if shape.old:
            events = {"type": EVENT_TYPE, "source": EVENT_SOURCE, "events": shape.old // len(dests)}
            step(conn, "old events", st.FILL_HISTORY_EVENTS, events)
            step(conn, "old deliveries", st.FILL_HISTORY_DELIVERIES, {"destinations": dests})
            step(conn, "old attempts", st.FILL_HISTORY_ATTEMPTS, {})
            conn.execute("vacuum analyze events")
            conn.execute("vacuum analyze deliveries")
            conn.execute("vacuum analyze webhook_deliveries")
        recent = {
            "type": EVENT_TYPE,
            "source": EVENT_SOURCE,
            "events": max(1, shape.recent // len(dests)),
            "span_s": 3600.0,
            "destinations": dests,
        }
        step(conn, "recent deliveries", st.FILL_RECENT, recent)
        step(conn, "recent attempts", st.FILL_RECENT_ATTEMPTS, {})
        if shape.dead:
            step(conn, "dead letters", st.FILL_DEAD, {"dead": shape.dead})
    if shape.pending:
        t = time.monotonic()
        fill_pending(dsn, shape.pending, first=10_000_000)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(st.MAKE_RETRYING, {})
        timings["pending"] = round(time.monotonic() - t, 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Statistics, not vacuum: the visibility map of the busy hour stays as traffic left it.
        conn.execute("analyze")
    return timings


class TimedStore(Store):
    """The store, timing each named statement (and keeping its last parameters to explain)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.params: dict[str, dict[str, Any]] = {}

    async def _timed(self, kind: str, name: str, params: dict[str, Any]) -> Any:
        t = time.perf_counter()
        try:
            return await getattr(super(), kind)(name, params)
        finally:
            self.times[name].append((time.perf_counter() - t) * 1000)
            self.params[name] = params

    async def _fetchall(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._timed("_fetchall", name, params)  # type: ignore[no-any-return]

    async def _fetchone(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        return await self._timed("_fetchone", name, params)  # type: ignore[no-any-return]

    async def _execute(self, name: str, params: dict[str, Any]) -> int:
        return await self._timed("_execute", name, params)  # type: ignore[no-any-return]


async def _breakdown(dsn: str, samples: int) -> tuple[list[float], TimedStore]:
    pool = make_pool(dsn, max_size=2, timeout_s=30.0, name="carinho-bench-status")
    await pool.open(wait=True, timeout=15.0)
    try:
        store = TimedStore(pool)
        env = {f"DEST_{d.upper()}_URL": f"http://127.0.0.1:9/{d}" for d in DESTINATIONS}
        settings = load_settings(env={"DATABASE_URL": dsn, **env})
        totals = []
        for _ in range(samples):
            t = time.perf_counter()
            await status_report(store, settings, set(DESTINATIONS))
            totals.append((time.perf_counter() - t) * 1000)
        return totals, store
    finally:
        await pool.close()


def explain(dsn: str, store: TimedStore, out: Path) -> dict[str, float]:
    """EXPLAIN ANALYZE of every statement the report ran, each in a rolled-back transaction
    (a statement that writes, such as a rollup, leaves nothing behind)."""
    times: dict[str, float] = {}
    texts: list[str] = []
    with psycopg.connect(dsn) as conn:
        conn.execute("set jit = off")  # as the store's connections (store._configure)
        conn.commit()
        for name, params in store.params.items():
            with conn.cursor() as cur:
                cur.execute(
                    b"explain (analyze, buffers, format json) " + q(name).as_bytes(cur), params
                )
                row = cur.fetchone()
                assert row is not None
                plan = row[0][0]
                times[name] = round(plan["Execution Time"], 2)
                cur.execute(b"explain (analyze, buffers) " + q(name).as_bytes(cur), params)
                texts.append(f"-- {name}\n" + "\n".join(r[0] for r in cur.fetchall()))
            conn.rollback()
    out.write_text("\n\n".join(texts) + "\n")
    return times


def legacy(dsn: str, *, jit_off: bool, samples: int = SAMPLES) -> dict[str, Any]:
    """The same-run baseline: the statements /status ran before sql/0011, back to back on one
    connection (what the old report cost in the database), JIT as the server has it (as the
    old pool ran them) or off (as the store runs now)."""
    from datetime import UTC, datetime

    from ..settings import HTTP_DESTINATIONS

    now = datetime.now(UTC)
    params: dict[str, dict[str, Any]] = {
        "ops_lag": {"window_s": 900.0, "sample": 10_000},
        "ops_destinations": {"destinations": sorted(HTTP_DESTINATIONS)},
        "list_workers": {"alive_within_s": 30.0},
        "dlq_top_errors": {"since": now.replace(year=now.year - 100), "until": now, "limit": 5},
    }
    totals: list[float] = []
    per: dict[str, list[float]] = defaultdict(list)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if jit_off:
            conn.execute("set jit = off")
        for _ in range(samples):
            started = time.perf_counter()
            for name, query in st.LEGACY_STATUS.items():
                t = time.perf_counter()
                conn.execute(query, params.get(name, {})).fetchall()  # type: ignore[arg-type]
                per[name].append((time.perf_counter() - t) * 1000)
            totals.append((time.perf_counter() - started) * 1000)
    return {
        "total_ms": round(median(totals), 2),
        "statement_ms": dict(
            sorted(((n, round(median(v), 2)) for n, v in per.items()), key=lambda kv: -kv[1])
        ),
    }


def rollup_cold(dsn: str) -> float:
    """The rollup of a whole hour at once (the first call after a deploy; afterwards each
    call has the minute or two closed since the last)."""
    from ..ops import ROLLUP_SETTLE_S

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set jit = off")
        conn.execute("delete from status_minutes")
        t = time.perf_counter()
        conn.execute(q("status_rollup"), {"settle_s": ROLLUP_SETTLE_S})
        return round((time.perf_counter() - t) * 1000, 2)


def breakdown(dsn: str, run_dir: Path, samples: int = SAMPLES) -> dict[str, Any]:
    totals, store = asyncio.run(_breakdown(dsn, samples))
    per = {name: round(median(ts), 2) for name, ts in store.times.items()}
    plans = run_dir / "status-plans.txt"
    explained = explain(dsn, store, plans)
    first = {name: round(ts[0], 2) for name, ts in store.times.items()}
    return {
        "rollup_cold_ms": rollup_cold(dsn),
        "report_ms": round(median(totals), 2),
        "report_first_ms": round(totals[0], 2),
        "statement_ms": dict(sorted(per.items(), key=lambda kv: -kv[1])),
        "statement_first_ms": first,
        "explain_ms": explained,
        "plans": str(plans),
    }


def status_figure(port: int, admin_key: str, shape: Shape) -> Figure | None:
    from .ours import status_latency

    fig = status_latency(port, admin_key, samples=SAMPLES)
    if fig is not None:
        fig.name = f"GET /status, busy hour + big DLQ ({shape.label()})"
    return fig


def main() -> int:
    from .ours import Procs, make_keys

    shape = Shape.from_env()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS_DIR / f"status-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    server = find_server()
    receiver = Receiver()
    report: dict[str, Any] = {"shape": vars(shape)}
    try:
        with scratch_db(server, "status") as dsn:
            report["fill_s"] = fill(dsn, shape)
            keys = make_keys(dsn)
            procs = Procs(dsn, run_dir, receiver)
            webs = procs.start_webs(1, 4)
            try:
                fig = status_figure(webs[0][1], keys.admin, shape)
            finally:
                procs.stop_all()
            report["status_http"] = fig.as_dict() if fig else None
            report["breakdown"] = breakdown(dsn, run_dir)
            report["legacy"] = legacy(dsn, jit_off=False)
            report["legacy_jit_off"] = legacy(dsn, jit_off=True)
    finally:
        receiver.stop()
        if server.handle is not None:
            server.handle.cleanup()
    out = run_dir / "status.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
