"""`make soak`: a steady offered load for SOAK_MINUTES (default 10), reporting every minute.

Real processes on a scratch database: one `carinho-web`, one `carinho-worker` against the no-op
receiver, and `carinho-scheduler` running the retention job every minute with short retention
(SOAK_RETENTION_S, default 120 s), so finished rows leave as fast as they arrive and the
tables should stay flat. When the server runs with autovacuum off (SOAK_VACUUM=auto, the
default), the soak vacuums the three tables every minute in its place; SOAK_VACUUM=off shows
what happens without it, SOAK_VACUUM=on vacuums regardless. The load is POST /events at
SOAK_RATE events/s (default 50; each event is 2 deliveries). Every minute it prints:

- end-to-end latency accepted -> received (p50/p99) over that minute;
- a claim probe: EXPLAIN ANALYZE of the claim's index scan (due pending rows by priority,
  SKIP LOCKED, LIMIT 50) in a rolled-back transaction: time and buffers touched, which grow if
  dead or finished rows pile up on the claim's path;
- heap and index sizes of events, deliveries, webhook_deliveries, the claim index, dead rows;
- worker and web RSS.

At the end: growth between the second minute and the last (sizes, RSS), with a verdict.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from . import statements as st
from .common import (
    DESTINATIONS,
    EVENT_TYPE,
    RESULTS_DIR,
    Child,
    Receiver,
    child_env,
    event_payload,
    find_server,
    log,
    percentile,
    python_module,
    scratch_db,
)
from .ours import Procs, make_keys

TABLES = ["events", "deliveries", "webhook_deliveries"]

CLAIM_PROBE = """
explain (analyze, buffers, format json)
select id from deliveries
where status = 'pending' and due and available_at <= now()
order by priority, available_at, id
limit 50
for update skip locked
"""


@dataclass
class Minute:
    minute: int
    sent: int
    accepted: int
    e2e_p50_ms: float
    e2e_p99_ms: float
    claim_ms: float
    claim_buffers: int
    sizes_mb: dict[str, float]
    claim_index_kb: float
    dead_rows: dict[str, int]
    worker_rss_mb: float
    web_rss_mb: float
    pending: int
    extra: dict[str, Any] = field(default_factory=dict)


def _claim_probe(conn: psycopg.Connection[Any]) -> tuple[float, int]:
    """Time and buffers of the claim's scan; the locks it takes are rolled back."""
    result = (float("nan"), 0)
    with conn.transaction():
        plan = conn.execute(CLAIM_PROBE).fetchone()[0]  # type: ignore[index]
        top = plan[0]
        buffers = int(top["Plan"].get("Shared Hit Blocks", 0)) + int(
            top["Plan"].get("Shared Read Blocks", 0)
        )
        result = (float(top["Execution Time"]), buffers)
        raise psycopg.Rollback()
    return result


def _sizes(conn: psycopg.Connection[Any]) -> tuple[dict[str, float], dict[str, int], float]:
    rows = conn.execute(st.TABLE_SIZES, {"tables": TABLES}).fetchall()
    sizes = {r[0]: round((r[1] + r[2]) / 1e6, 2) for r in rows}
    dead = {r[0]: int(r[4]) for r in rows}
    claim = conn.execute(st.INDEX_SIZE, {"name": "deliveries_claim"}).fetchone()
    return sizes, dead, round((claim[0] if claim else 0) / 1e3, 1)


def _rss_mb(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 1e6
    except psutil.NoSuchProcess:
        return float("nan")


async def _load(
    url: str, key: str, rate: float, until: float, counters: dict[str, int], base: int
) -> None:
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        sem = asyncio.Semaphore(64)
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            async with sem:
                try:
                    r = await client.post(
                        url,
                        json={"type": EVENT_TYPE, "payload": event_payload(base + i)},
                        headers=headers,
                    )
                    counters["accepted"] += r.status_code == 202
                except httpx.HTTPError:
                    counters["failed"] += 1

        start = time.monotonic()
        i = 0
        while time.monotonic() < until:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            counters["sent"] += 1
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=15)


def _e2e(dsn: str, records: list[tuple[str, float]]) -> list[float]:
    arrivals = {int(w[4:]): t for w, t in records if w.startswith("dlv_")}
    if not arrivals:
        return []
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(st.LATENCY_SOURCE, {"ids": list(arrivals)}).fetchall()
    return [(arrivals[i] - t) * 1000 for i, t in rows]


# Autovacuum's job, done by hand when the server has it off (test servers often do): what a
# production server would do at its 1-minute naptime on tables this busy.
VACUUM = {
    "events": "vacuum (analyze) events",
    "deliveries": "vacuum (analyze) deliveries",
    "webhook_deliveries": "vacuum (analyze) webhook_deliveries",
}


def soak(minutes: int, rate: float, retention_s: float, vacuum: str = "auto") -> list[Minute]:
    server = find_server()
    receiver = Receiver()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS_DIR / f"soak-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    out: list[Minute] = []
    retention_days = f"{retention_s / 86400:.8f}"
    try:
        with scratch_db(server, "soak") as dsn:
            procs = Procs(dsn, run_dir, receiver)
            keys = make_keys(dsn)
            extra = {
                "RETENTION_CRON": "* * * * *",
                "RETENTION_DELIVERED_DAYS": retention_days,
                "RETENTION_EVENTS_DAYS": retention_days,
                "RETENTION_ARCHIVED_DAYS": retention_days,
            }
            webs = procs.start_webs(1, 8, **extra)
            workers = procs.start_workers(1, 100, **extra)
            scheduler = Child(
                python_module("carinho_outbox.scheduler"),
                child_env(dsn, **extra),
                run_dir / "scheduler.log",
            )
            procs.children.append(scheduler)
            url = f"http://127.0.0.1:{webs[0][1]}/events"
            counters = {"sent": 0, "accepted": 0, "failed": 0}
            end = time.monotonic() + minutes * 60
            base = int(time.time()) % 10_000_000
            load = threading.Thread(
                target=lambda: asyncio.run(_load(url, keys.ingest, rate, end, counters, base)),
                daemon=True,
            )
            load.start()
            per_s = rate * len(DESTINATIONS)
            log(f"soak: {minutes} min at {rate:g} events/s ({per_s:g} deliveries/s)")
            _print_header()
            with psycopg.connect(dsn, autocommit=True) as conn:
                autovacuum = conn.execute("show autovacuum").fetchone()[0] == "on"  # type: ignore[index]
                emulate = vacuum == "on" or (vacuum == "auto" and not autovacuum)
                if emulate:
                    log(
                        "soak: the server runs with autovacuum="
                        + ("on" if autovacuum else "off")
                        + "; vacuuming the outbox tables every minute in its place"
                    )
                receiver.record()
                for m in range(1, minutes + 1):
                    tick = end - (minutes - m) * 60
                    time.sleep(max(0.0, tick - time.monotonic()))
                    if emulate:
                        for table in TABLES:
                            conn.execute(VACUUM[table])
                    records = receiver.records()
                    receiver.record()
                    lat = _e2e(dsn, records)
                    claim_ms, buffers = _claim_probe(conn)
                    sizes, dead, claim_kb = _sizes(conn)
                    pending = int(conn.execute(st.COUNT_PENDING).fetchone()[0])  # type: ignore[index]
                    row = Minute(
                        minute=m,
                        sent=counters["sent"],
                        accepted=counters["accepted"],
                        e2e_p50_ms=percentile(lat, 50),
                        e2e_p99_ms=percentile(lat, 99),
                        claim_ms=claim_ms,
                        claim_buffers=buffers,
                        sizes_mb=sizes,
                        claim_index_kb=claim_kb,
                        dead_rows=dead,
                        worker_rss_mb=round(_rss_mb(workers[0].pid), 1),
                        web_rss_mb=round(_rss_mb(webs[0][0].pid), 1),
                        pending=pending,
                    )
                    out.append(row)
                    _print_row(row)
            load.join(timeout=60)
            procs.stop_all()
    finally:
        receiver.stop()
        if server.handle is not None:
            server.handle.cleanup()
    (run_dir / "soak.json").write_text(json.dumps([m.__dict__ for m in out], indent=2))
    _print_summary(out)
    print(f"wrote {(run_dir / 'soak.json').relative_to(RESULTS_DIR.parent)}")
    return out


def _print_header() -> None:
    print(
        f"{'min':>3} {'sent':>7} {'accepted':>8} {'pending':>7} {'e2e p50':>8} {'e2e p99':>8} "
        f"{'claim ms':>8} {'buffers':>7} {'deliv MB':>8} {'events MB':>9} {'attempts MB':>11} "
        f"{'claim idx kB':>12} {'dead dlv':>8} {'worker MB':>9} {'web MB':>6}",
        flush=True,
    )


def _print_row(m: Minute) -> None:
    print(
        f"{m.minute:>3} {m.sent:>7} {m.accepted:>8} {m.pending:>7} {m.e2e_p50_ms:>8.1f} "
        f"{m.e2e_p99_ms:>8.1f} {m.claim_ms:>8.2f} {m.claim_buffers:>7} "
        f"{m.sizes_mb.get('deliveries', 0):>8.1f} {m.sizes_mb.get('events', 0):>9.1f} "
        f"{m.sizes_mb.get('webhook_deliveries', 0):>11.1f} {m.claim_index_kb:>12.1f} "
        f"{m.dead_rows.get('deliveries', 0):>8} {m.worker_rss_mb:>9.1f} {m.web_rss_mb:>6.1f}",
        flush=True,
    )


def _print_summary(rows: list[Minute]) -> None:
    if len(rows) < 3:
        return
    first, last = rows[1], rows[-1]
    print("\nfrom minute 2 to the last:")
    for table in TABLES:
        a, b = first.sizes_mb.get(table, 0.0), last.sizes_mb.get(table, 0.0)
        print(f"  {table:<20} {a:8.1f} MB -> {b:8.1f} MB")
    print(f"  claim index          {first.claim_index_kb:8.1f} kB -> {last.claim_index_kb:8.1f} kB")
    print(f"  claim probe          {first.claim_ms:8.2f} ms -> {last.claim_ms:8.2f} ms")
    print(f"  worker RSS           {first.worker_rss_mb:8.1f} MB -> {last.worker_rss_mb:8.1f} MB")
    print(f"  web RSS              {first.web_rss_mb:8.1f} MB -> {last.web_rss_mb:8.1f} MB")


def main() -> int:
    minutes = int(os.environ.get("SOAK_MINUTES", "10"))
    rate = float(os.environ.get("SOAK_RATE", "50"))
    retention_s = float(os.environ.get("SOAK_RETENTION_S", "120"))
    vacuum = os.environ.get("SOAK_VACUUM", "auto")
    soak(minutes, rate, retention_s, vacuum)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
