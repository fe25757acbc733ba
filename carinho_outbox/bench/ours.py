"""Us: the ingress (POST /events through real `carinho-web` processes, driven by wrk), the
engine (real `carinho-worker` processes against the no-op receiver, and with in-process no-op
adapters), end-to-end latency, history, /status, and peak RSS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ..cli import create_key
from ..store import Store, make_pool
from . import statements as st
from .ceilings import fill_pending
from .common import (
    DESTINATIONS,
    EVENT_SOURCE,
    EVENT_TYPE,
    Child,
    Figure,
    Receiver,
    RssSampler,
    child_env,
    event_payload,
    figure,
    log,
    median,
    percentile,
    python_module,
    wait_until,
)
from .wrk import WrkResult, run_wrk_many, write_batch_lua, write_lua

# The real worker; the same with in-process no-op adapters; the same with its webhooks sent
# through aiohttp (the client it had before adapters/http1.py) or with a sharded httpx client
# for the low-volume adapters (proto_worker.py: comparisons, not product code).
WORKER_MODULES = {
    "http": "carinho_outbox.worker_cli",
    "noop": "carinho_outbox.bench.noop_worker",
    "sharded": "carinho_outbox.bench.proto_worker",
    "aiohttp": "carinho_outbox.bench.proto_worker",
    "tuned": "carinho_outbox.bench.noop_worker",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Keys:
    ingest: str  # rate limiter on, with a quota far above the load (the limiter's cost counts)
    unlimited: str  # rate limiter off for this key (rate 0)
    admin: str


async def _make_keys(dsn: str) -> Keys:
    pool = make_pool(dsn, max_size=1, timeout_s=10.0, name="carinho-bench")
    await pool.open(wait=True, timeout=15.0)
    try:
        store = Store(pool)
        stamp = int(time.time() * 1000)
        ingest = await create_key(
            store,
            name=f"bench-{stamp}",
            sources=[EVENT_SOURCE],
            admin=False,
            rate_per_s=1_000_000.0,
            burst=1_000_000,
        )
        unlimited = await create_key(
            store,
            name=f"bench-nolimit-{stamp}",
            sources=[EVENT_SOURCE],
            admin=False,
            rate_per_s=0.0,
            burst=0,
        )
        admin = await create_key(store, name=f"bench-admin-{stamp}", sources=[], admin=True)
        return Keys(ingest, unlimited, admin)
    finally:
        await pool.close()


def make_keys(dsn: str) -> Keys:
    return asyncio.run(_make_keys(dsn))


# --- processes ------------------------------------------------------------------------------


@dataclass
class Procs:
    dsn: str
    logs: Path
    receiver: Receiver
    children: list[Child] = field(default_factory=list)

    def worker_env(self, concurrency: int, **extra: str) -> dict[str, str]:
        dests = {f"DEST_{d.upper()}_URL": self.receiver.url(f"/{d}") for d in DESTINATIONS}
        return child_env(
            self.dsn,
            WORKER_CONCURRENCY=str(concurrency),
            **dests,
            **extra,
        )

    def start_workers(
        self, n: int, concurrency: int, *, noop: bool = False, kind: str = "", **extra: str
    ) -> list[Child]:
        kind = kind or ("noop" if noop else "http")
        module = WORKER_MODULES[kind]
        extra = {**extra, "BENCH_PROTO_CLIENT": kind}
        if kind == "tuned":
            extra.update(BENCH_TUNED="1", LOG_LEVEL="WARNING")
        started = [
            Child(
                python_module(module),
                self.worker_env(concurrency, **extra),
                self.logs / f"worker-{kind}.log",
            )
            for _ in range(n)
        ]
        self.children += started
        return started

    def start_webs(self, n: int, pool_per_proc: int, **extra: str) -> list[tuple[Child, int]]:
        webs = []
        for _ in range(n):
            port = free_port()
            env = child_env(self.dsn, DB_POOL_MAX=str(pool_per_proc), **extra)
            child = Child(
                python_module("carinho_outbox.web.serve", "--port", str(port)),
                env,
                self.logs / "web.log",
            )
            webs.append((child, port))
            self.children.append(child)
        for child, port in webs:
            wait_until(lambda c=child, p=port: _healthy(c, p), timeout_s=60, interval_s=0.1)
        return webs

    def stop(self, children: list[Child]) -> None:
        for c in children:
            if c.alive():
                c.popen.send_signal(15)
        for c in children:
            c.stop(timeout_s=40)
            if c in self.children:
                self.children.remove(c)

    def stop_all(self) -> None:
        self.stop(list(self.children))


def _healthy(child: Child, port: int) -> bool:
    if not child.alive():
        raise RuntimeError(f"web process exited ({child.popen.returncode}); see {child.log}")
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def _scalar(conn: psycopg.Connection[Any], query: str, params: dict[str, Any] | None = None) -> Any:
    row = conn.execute(query, params or {}).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


# --- engine ---------------------------------------------------------------------------------


@dataclass
class EngineRun:
    figure: Figure
    rss_mb: float
    pids: list[int]


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (those we may not read count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class CpuMeter:
    """CPU seconds of our processes and of their Postgres backends (by application_name)
    between start() and per_item(): where the time per event goes when a rate flattens."""

    def __init__(self, dsn: str, pids: list[int], application_name: str) -> None:
        self.dsn = dsn
        self.pids = pids
        self.application_name = application_name
        self.backends: list[int] = []
        self.before = (0.0, 0.0)

    def start(self) -> None:
        with connect(self.dsn) as conn:
            self.backends = [
                r[0]
                for r in conn.execute(
                    "select pid from pg_stat_activity where application_name = %(name)s",
                    {"name": self.application_name},
                )
            ]
        self.before = (_cpu_s(self.pids), _cpu_s(self.backends))

    def per_item(self, items: float, what: str, ours: str) -> str:
        if items <= 0:
            return ""
        own = 1e6 * (_cpu_s(self.pids) - self.before[0]) / items
        pg = 1e6 * (_cpu_s(self.backends) - self.before[1]) / items
        return f"CPU per {what}: {ours} {own:.0f} µs, their Postgres backends {pg:.0f} µs"


def engine_rate(
    procs: Procs,
    *,
    workers: int,
    noop: bool = False,
    kind: str = "",
    concurrency: int,
    backlog: int,
    warmup_s: float,
    window_s: float,
    windows: int,
    truncate: bool = True,
    label: str = "",
    on_running: Any = None,
) -> EngineRun:
    """Deliveries/s of `workers` processes working off a backlog of `backlog` deliveries."""
    dsn = procs.dsn
    with connect(dsn) as conn:
        if truncate:
            conn.execute(st.TRUNCATE_OUTBOX)
        since = _scalar(conn, "select now()")
    fill_pending(dsn, backlog, first=int(time.time() * 1000) % 50_000_000)
    kind = kind or ("noop" if noop else "http")
    started = procs.start_workers(workers, concurrency, kind=kind)
    pids = [c.pid for c in started]
    rates: list[float] = []
    note = cpu_note = ""
    with RssSampler(lambda: pids) as rss, connect(dsn) as conn:
        try:
            wait_until(
                lambda: _scalar(conn, st.COUNT_DELIVERED_SINCE, {"since": since}) > 0,
                timeout_s=60,
                interval_s=0.05,
            )
            time.sleep(warmup_s)
            probe = "select count(*), extract(epoch from clock_timestamp())::float8 from deliveries"
            probe += " where status = 'delivered' and finished_at >= %(since)s"
            last = conn.execute(probe, {"since": since}).fetchone()
            assert last is not None
            if on_running is not None:
                on_running(pids)
            backends = [
                r[0]
                for r in conn.execute(
                    "select pid from pg_stat_activity where application_name = 'carinho-worker'"
                )
            ]
            cpu_before = (_cpu_s(pids), _cpu_s(backends))
            for i in range(windows):
                time.sleep(window_s)
                now = conn.execute(probe, {"since": since}).fetchone()
                assert now is not None
                rates.append((now[0] - last[0]) / (now[1] - last[1]))
                if i == 0:
                    # CPU per delivery over the first window (the backlog is never dry there):
                    # a figure a busy machine moves far less than the rate.
                    done = max(1, now[0] - last[0])
                    worker_us = 1e6 * (_cpu_s(pids) - cpu_before[0]) / done
                    pg_us = 1e6 * (_cpu_s(backends) - cpu_before[1]) / done
                    cpu_note = f"CPU per delivery: workers {worker_us:.0f} µs"
                    if pg_us > 0:
                        cpu_note += f", their Postgres backends {pg_us:.0f} µs"
                last = now
            pending = _scalar(conn, st.COUNT_PENDING)
        finally:
            procs.stop(started)
    if rates and pending == 0:
        # The backlog ran dry during the last windows: keep the windows that were full.
        top = max(rates)
        kept = [r for r in rates if r >= 0.6 * top]
        if len(kept) < len(rates):
            note = f"backlog ran out ({len(rates) - len(kept)} window(s) dropped); "
            rates = kept
    note += cpu_note
    what = {
        "http": "HTTP no-op receiver",
        "noop": "in-process no-op adapter",
        "sharded": "HTTP no-op receiver, sharded httpx for low-volume adapters",
        "aiohttp": "HTTP no-op receiver, webhooks over aiohttp (comparison)",
        "tuned": "no-op adapter, no pool check, no per-delivery log (prototype)",
    }[kind]
    name = label or f"engine, {what}, {workers} proc, concurrency {concurrency}"
    return EngineRun(figure(name, rates, "deliveries/s", note), rss.peak_mb, pids)


# --- ingress --------------------------------------------------------------------------------


@dataclass
class IngressRun:
    figure: Figure
    rss_mb: float
    errors: int
    events: int


@dataclass
class _Driven:
    """What wrk measured against fresh web processes, window by window, and what it cost."""

    windows: list[list[WrkResult]]
    cpu_note: str
    rss_mb: float
    events: int
    per_event: float
    pool: int

    def errors(self) -> int:
        return sum(r.non_2xx + r.socket_errors for w in self.windows for r in w)

    def requests(self) -> int:
        return sum(r.requests for w in self.windows for r in w)


def _drive_ingress(
    procs: Procs,
    lua: Path,
    *,
    path: str,
    web_procs: int,
    connections: int,
    warmup_s: float,
    window_s: float,
    windows: int,
    on_running: Any,
    events_per_request: int,
) -> _Driven:
    """Empty tables, `web_procs` fresh web processes, a warm-up, then `windows` wrk runs."""
    with connect(procs.dsn) as conn:
        conn.execute(st.TRUNCATE_OUTBOX)
    pool = max(1, connections // web_procs)
    webs = procs.start_webs(web_procs, pool)
    urls = [f"http://127.0.0.1:{port}{path}" for _, port in webs]
    pids = [c.pid for c, _ in webs]
    meter = CpuMeter(procs.dsn, pids, "carinho-web")
    per_window: list[list[WrkResult]] = []
    try:
        with RssSampler(lambda: pids) as rss:
            run_wrk_many(urls, lua, connections=connections, duration_s=warmup_s)
            if on_running is not None:
                on_running(pids)
            meter.start()
            for _ in range(windows):
                per_window.append(
                    run_wrk_many(urls, lua, connections=connections, duration_s=window_s)
                )
            answered = sum(r.requests - r.non_2xx - r.socket_errors for w in per_window for r in w)
            cpu_note = meter.per_item(answered * events_per_request, "event", "web")
    finally:
        procs.stop([c for c, _ in webs])
    with connect(procs.dsn) as conn:
        events = int(_scalar(conn, st.COUNT_EVENTS))
        per_event = _scalar(
            conn,
            "select count(*)::float8 / greatest(1, (select count(*) from events)) from deliveries",
        )
    return _Driven(per_window, cpu_note, rss.peak_mb, events, per_event, pool)


def ingress_rate(
    procs: Procs,
    keys: Keys,
    *,
    web_procs: int,
    connections: int,
    warmup_s: float,
    window_s: float,
    windows: int,
    limiter: bool = True,
    on_running: Any = None,
) -> IngressRun:
    key = keys.ingest if limiter else keys.unlimited
    lua = write_lua(procs.logs / f"ingress-{'limited' if limiter else 'nolimit'}.lua", key=key)
    run = _drive_ingress(
        procs,
        lua,
        path="/events",
        web_procs=web_procs,
        connections=connections,
        warmup_s=warmup_s,
        window_s=window_s,
        windows=windows,
        on_running=on_running,
        events_per_request=1,
    )
    rates = [sum(r.rate for r in w) for w in run.windows]
    errors = run.errors()
    note = f"{run.per_event:.2f} deliveries per event; DB pool {run.pool} per process"
    if run.cpu_note:
        note += f"; {run.cpu_note}"
    if errors:
        note += f"; {errors} non-2xx/socket errors"
    what = "key rate limit on (high quota)" if limiter else "key rate limit off"
    fig = figure(
        f"ingress POST /events, {web_procs} web proc, {connections} conns, {what}",
        rates,
        "events/s",
        note,
    )
    return IngressRun(fig, run.rss_mb, errors, run.events)


def ingress_batch_rate(
    procs: Procs,
    keys: Keys,
    *,
    web_procs: int,
    connections: int,
    per_request: int,
    warmup_s: float,
    window_s: float,
    windows: int,
    on_running: Any = None,
) -> IngressRun:
    """POST /events/batch with `per_request` events per body: events/s from wrk's 2xx answers
    (requests/s times events per request), checked against the rows in the table afterwards."""
    lua = write_batch_lua(
        procs.logs / "ingress-batch.lua", key=keys.ingest, per_request=per_request
    )
    run = _drive_ingress(
        procs,
        lua,
        path="/events/batch",
        web_procs=web_procs,
        connections=connections,
        warmup_s=warmup_s,
        window_s=window_s,
        windows=windows,
        on_running=on_running,
        events_per_request=per_request,
    )
    rates: list[float] = []
    for results in run.windows:
        failed = sum(r.non_2xx + r.socket_errors for r in results)
        done = sum(r.requests for r in results)
        # Only answered batches count: scale the rate by the share that succeeded.
        ok_share = (done - failed) / done if done else 0.0
        rates.append(sum(r.rate for r in results) * ok_share * per_request)
    errors, requests = run.errors(), run.requests()
    rows = [r * (1 + run.per_event) for r in rates]
    note = (
        f"{median(rows):,.0f} rows/s written (1 event + {run.per_event:.2f} deliveries each); "
        f"{run.events:,} events in table; DB pool {run.pool} per process"
    )
    if run.cpu_note:
        note += f"; {run.cpu_note}"
    if errors:
        note += f"; {errors} non-2xx/socket errors of {requests} requests"
    fig = figure(
        f"ingress batch endpoint, {per_request} events per request, {web_procs} web proc, "
        f"{connections} conns",
        rates,
        "events/s",
        note,
    )
    return IngressRun(fig, run.rss_mb, errors, run.events)


# --- latency --------------------------------------------------------------------------------


async def _post_events(
    url: str, key: str, count: int, *, gap_s: float = 0.0, rate_per_s: float = 0.0
) -> int:
    headers = {"authorization": f"Bearer {key}"}
    ok = 0
    base = int(time.time() * 1000) % 10_000_000
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def one(i: int) -> None:
            nonlocal ok
            r = await client.post(
                url,
                json={"type": EVENT_TYPE, "payload": event_payload(base + i)},
                headers=headers,
            )
            ok += r.status_code == 202

        if rate_per_s <= 0:
            for i in range(count):
                await one(i)
                await asyncio.sleep(gap_s)
            return ok
        start = time.monotonic()
        tasks = []
        for i in range(count):
            delay = start + i / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return ok


@dataclass
class LatencyRun:
    p50: float
    p95: float
    p99: float
    samples: int
    accepted: int


def _latencies(dsn: str, records: list[tuple[str, float]]) -> list[float]:
    arrivals: dict[int, float] = {}
    for wid, t in records:
        if wid.startswith("dlv_"):
            arrivals.setdefault(int(wid[4:]), t)
    if not arrivals:
        return []
    with connect(dsn) as conn:
        rows = conn.execute(st.LATENCY_SOURCE, {"ids": list(arrivals)}).fetchall()
    return [(arrivals[i] - accepted) * 1000 for i, accepted in rows]


def latency(
    procs: Procs,
    keys: Keys,
    *,
    web_port: int,
    events: int,
    gap_s: float = 0.0,
    rate_per_s: float = 0.0,
) -> LatencyRun:
    """accepted (the event's received_at, stamped by the ingress transaction) -> the receiver
    reading the request head, for every delivery of `events` events."""
    url = f"http://127.0.0.1:{web_port}/events"
    before = procs.receiver.count()
    procs.receiver.record()
    accepted = asyncio.run(
        _post_events(url, keys.ingest, events, gap_s=gap_s, rate_per_s=rate_per_s)
    )
    expect = before + accepted * len(DESTINATIONS)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: procs.receiver.count() >= expect, timeout_s=30, interval_s=0.05)
    lat = _latencies(procs.dsn, procs.receiver.records())
    return LatencyRun(
        percentile(lat, 50), percentile(lat, 95), percentile(lat, 99), len(lat), accepted
    )


# --- history and /status --------------------------------------------------------------------


def fill_history(dsn: str, deliveries: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    with connect(dsn) as conn:
        conn.execute(st.TRUNCATE_OUTBOX)
        for name, query, params in (
            (
                "events",
                st.FILL_HISTORY_EVENTS,
                {
                    "type": EVENT_TYPE,
                    "source": EVENT_SOURCE,
                    "events": deliveries // len(DESTINATIONS),
                },
            ),
            ("deliveries", st.FILL_HISTORY_DELIVERIES, {"destinations": list(DESTINATIONS)}),
            ("attempts", st.FILL_HISTORY_ATTEMPTS, {}),
        ):
            t = time.monotonic()
            conn.execute(query, params)  # type: ignore[arg-type]
            timings[name] = time.monotonic() - t
            log(f"history: {name} filled in {timings[name]:.1f}s")
        t = time.monotonic()
        conn.execute("vacuum analyze events")
        conn.execute("vacuum analyze deliveries")
        conn.execute("vacuum analyze webhook_deliveries")
        timings["vacuum"] = time.monotonic() - t
    return timings


def status_latency(port: int, admin_key: str, samples: int = 10) -> Figure | None:
    url = f"http://127.0.0.1:{port}/status"
    headers = {"authorization": f"Bearer {admin_key}"}
    times: list[float] = []
    with httpx.Client(timeout=30) as client:
        for _ in range(samples):
            t = time.perf_counter()
            r = client.get(url, headers=headers)
            elapsed = (time.perf_counter() - t) * 1000
            if r.status_code == 404:
                return None
            if r.status_code != 200:
                return Figure("/status latency", float("nan"), "ms", note=f"HTTP {r.status_code}")
            times.append(elapsed)
    return Figure(
        "/status latency (median)",
        median(times),
        "ms",
        [round(t, 1) for t in times],
        note=f"max {max(times):.1f} ms over {samples} calls",
    )
