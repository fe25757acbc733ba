"""Ceilings: what bare clients reach on the same server, tables and receiver.

- single-row INSERT commits/s and 100-rows-per-transaction rows/s (events table, ~500-byte
  payload) at 1 connection and at the ingress's connection count;
- a bare psycopg `FOR UPDATE SKIP LOCKED` claim-and-finish loop, batch 50, on deliveries;
- a bare httpx loop POSTing to the no-op receiver at the worker's concurrency;
- wrk's own ceiling against the no-op receiver (the load generator must not be the limit).

Load runs in child processes (spawned) so that the client side gets a core of its own where
it can; each child counts operations per wall-clock window, the parent sums the windows.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import statements as st
from .common import (
    DESTINATIONS,
    EVENT_SOURCE,
    EVENT_TYPE,
    PAYLOAD,
    Figure,
    event_payload,
    figure,
    log,
)
from .wrk import run_wrk, write_lua


@dataclass(frozen=True)
class Windows:
    warmup_s: float
    window_s: float
    count: int

    def boundaries(self, start_at: float) -> list[float]:
        first = start_at + self.warmup_s
        return [first + i * self.window_s for i in range(self.count + 1)]

    @property
    def total_s(self) -> float:
        return self.warmup_s + self.window_s * self.count


def _bucket(counts: list[int], bounds: list[float], now: float, n: int) -> None:
    """Add n operations finished at `now` to the window they fall in."""
    if now < bounds[0] or now >= bounds[-1]:
        return
    for i in range(len(bounds) - 1):
        if now < bounds[i + 1]:
            counts[i] += n
            return


# --- load children --------------------------------------------------------------------------


async def _insert_child(
    dsn: str, conns: int, batch: int, bounds: list[float], seed: int, notify: bool = False
) -> list[int]:
    counts = [0] * (len(bounds) - 1)
    end = bounds[-1]

    async def one(k: int) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while True:
                now = time.time()
                if now >= end:
                    return
                if batch == 1:
                    await conn.execute(
                        st.INSERT_ONE_NOTIFY if notify else st.INSERT_ONE,
                        {"type": EVENT_TYPE, "source": EVENT_SOURCE, "payload": Jsonb(PAYLOAD)},
                    )
                else:
                    await conn.execute(
                        st.INSERT_MANY,
                        {
                            "type": EVENT_TYPE,
                            "source": EVENT_SOURCE,
                            "payloads": [Jsonb(PAYLOAD)] * batch,
                        },
                    )
                _bucket(counts, bounds, time.time(), batch)

    await asyncio.gather(*(one(k) for k in range(conns)))
    return counts


def _claim_child(dsn: str, batch: int, bounds: list[float], seed: int) -> list[int]:
    counts = [0] * (len(bounds) - 1)
    worker = f"bare-{seed}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        has_due = bool(conn.execute(st.HAS_DUE_COLUMN).fetchone()[0])  # type: ignore[index]
        claim = st.BARE_CLAIM_DUE if has_due else st.BARE_CLAIM
        while time.time() < bounds[-1]:
            ids = [r[0] for r in conn.execute(claim, {"limit": batch, "worker": worker})]
            if not ids:
                break  # backlog exhausted: the parent notices short windows
            conn.execute(st.BARE_FINISH, {"ids": ids, "worker": worker})
            _bucket(counts, bounds, time.time(), len(ids))
    return counts


async def _httpx_child(
    url: str, concurrency: int, bounds: list[float], per_client: int
) -> list[int]:
    """`concurrency` loops POSTing; one client, or clients of `per_client` connections each."""
    import httpx

    counts = [0] * (len(bounds) - 1)
    body = json.dumps({"id": "x", "type": EVENT_TYPE, "data": event_payload()}).encode()
    headers = {"content-type": "application/json", "webhook-id": "dlv_1"}
    per = min(per_client, concurrency)
    n_clients = -(-concurrency // per)
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    clients = [httpx.AsyncClient(limits=limits, timeout=10.0) for _ in range(n_clients)]
    try:

        async def one(client: httpx.AsyncClient) -> None:
            while time.time() < bounds[-1]:
                r = await client.post(url, content=body, headers=headers)
                if r.status_code == 200:
                    _bucket(counts, bounds, time.time(), 1)

        await asyncio.gather(*(one(clients[i % n_clients]) for i in range(concurrency)))
    finally:
        for c in clients:
            await c.aclose()
    return counts


async def _aiohttp_child(url: str, concurrency: int, bounds: list[float]) -> list[int]:
    import aiohttp

    counts = [0] * (len(bounds) - 1)
    body = json.dumps({"id": "x", "type": EVENT_TYPE, "data": event_payload()}).encode()
    headers = {"content-type": "application/json", "webhook-id": "dlv_1"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            while time.time() < bounds[-1]:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        _bucket(counts, bounds, time.time(), 1)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return counts


def _child_main(kind: str, args: dict[str, Any]) -> list[int]:
    if kind == "insert":
        return asyncio.run(
            _insert_child(
                args["dsn"],
                args["conns"],
                args["batch"],
                args["bounds"],
                args["seed"],
                args.get("notify", False),
            )
        )
    if kind == "claim":
        return _claim_child(args["dsn"], args["batch"], args["bounds"], args["seed"])
    if kind == "httpx":
        return asyncio.run(
            _httpx_child(args["url"], args["concurrency"], args["bounds"], args["per_client"])
        )
    if kind == "aiohttp":
        return asyncio.run(_aiohttp_child(args["url"], args["concurrency"], args["bounds"]))
    raise ValueError(kind)


def run_children(kind: str, per_child: list[dict[str, Any]], windows: Windows) -> list[int]:
    """Start children together, return operations per window summed over children."""
    ctx = multiprocessing.get_context("spawn")
    # Spawned interpreters need a moment to import; start the windows after that.
    start_at = time.time() + 1.5
    bounds = windows.boundaries(start_at)
    with ctx.Pool(len(per_child)) as pool:
        results = [
            pool.apply_async(_child_main, (kind, {**args, "bounds": bounds, "seed": i}))
            for i, args in enumerate(per_child)
        ]
        per = [r.get(timeout=windows.total_s + 120) for r in results]
    return [sum(c[i] for c in per) for i in range(windows.count)]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --- measurements ---------------------------------------------------------------------------


def insert_ceiling(
    dsn: str, conns: int, batch: int, windows: Windows, notify: bool = False
) -> Figure:
    procs = 1 if conns == 1 else 2
    per = [{"dsn": dsn, "conns": c, "batch": batch, "notify": notify} for c in _split(conns, procs)]
    counts = run_children("insert", per, windows)
    rates = [c / windows.window_s for c in counts]
    what = "commits/s" if batch == 1 else "rows/s"
    name = (
        f"raw INSERT 1 row/commit, {conns} conn"
        if batch == 1
        else f"raw INSERT {batch} rows/commit, {conns} conn"
    )
    if notify:
        name += ", with pg_notify in the transaction"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("truncate events cascade")
    return figure(name, rates, what)


def fill_pending(dsn: str, deliveries: int, first: int = 1) -> int:
    events = max(1, deliveries // len(DESTINATIONS))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            st.FILL_PENDING,
            {
                "type": EVENT_TYPE,
                "source": EVENT_SOURCE,
                "payload": Jsonb(PAYLOAD),
                "first": first,
                "events": events,
                "destinations": list(DESTINATIONS),
            },
        )
        conn.execute("vacuum analyze deliveries")
        conn.execute("vacuum analyze events")
    return events * len(DESTINATIONS)


def claim_ceiling(dsn: str, procs: int, batch: int, windows: Windows, backlog: int) -> Figure:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(st.TRUNCATE_OUTBOX)
    started = time.monotonic()
    fill_pending(dsn, backlog)
    log(f"claim ceiling: {backlog} pending rows filled in {time.monotonic() - started:.1f}s")
    per = [{"dsn": dsn, "batch": batch} for _ in range(procs)]
    counts = run_children("claim", per, windows)
    rates = [c / windows.window_s for c in counts]
    note = ""
    if counts and counts[-1] < 0.5 * max(counts):
        note = "backlog ran out in the last window; raise BENCH_CLAIM_BACKLOG"
    return figure(
        f"bare SKIP LOCKED claim+finish, batch {batch}, {procs} proc", rates, "rows/s", note
    )


def httpx_ceiling(url: str, concurrency: int, windows: Windows, per_client: int) -> Figure:
    args = {"url": url, "concurrency": concurrency, "per_client": per_client}
    counts = run_children("httpx", [args], windows)
    rates = [c / windows.window_s for c in counts]
    how = (
        "one client"
        if per_client >= concurrency
        else f"{-(-concurrency // per_client)} clients x {per_client} conns"
    )
    return figure(f"bare httpx loop, concurrency {concurrency}, {how}, 1 proc", rates, "POST/s")


def aiohttp_ceiling(url: str, concurrency: int, windows: Windows) -> Figure:
    counts = run_children("aiohttp", [{"url": url, "concurrency": concurrency}], windows)
    rates = [c / windows.window_s for c in counts]
    return figure(f"bare aiohttp loop, concurrency {concurrency}, 1 proc", rates, "POST/s")


def wrk_ceiling(url: str, lua_dir: Any, connections: int, windows: Windows) -> Figure:
    lua = write_lua(lua_dir / "noop.lua", key="none")
    run_wrk(url, lua, connections=connections, duration_s=windows.warmup_s or 1.0)
    rates = [
        run_wrk(url, lua, connections=connections, duration_s=windows.window_s).rate
        for _ in range(windows.count)
    ]
    return figure(f"wrk ceiling vs no-op receiver, {connections} conns", rates, "req/s")
