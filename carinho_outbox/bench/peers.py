"""Peers: procrastinate and pgqueuer on the same server, each in its own scratch database,
through their documented APIs.

For each: enqueue jobs/s one at a time (1 client, and `concurrency` clients over a pool: the
same concurrency our ingress gets), enqueue jobs/s in batches of 100, no-op jobs/s processed by
one worker (the best of a few documented settings, all reported), and idle pickup latency
(enqueue one job at a time to an idle worker; time from just before the enqueue to the job
running). pgqueuer runs on asyncpg, its recommended driver; procrastinate on psycopg 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .common import PAYLOAD, Figure, PgServer, figure, log, percentile, scratch_db

BATCH = 100
PICKUP_SAMPLES = 40
PICKUP_GAP_S = 0.05


async def windowed(
    op: Callable[[], Awaitable[int]], clients: int, warmup_s: float, window_s: float, n: int
) -> list[float]:
    """Run `op` (returns items done) in `clients` loops; items/s per window."""
    start = time.time() + 0.2
    bounds = [start + warmup_s + i * window_s for i in range(n + 1)]
    counts = [0] * n

    async def loop() -> None:
        while True:
            now = time.time()
            if now >= bounds[-1]:
                return
            done = await op()
            t = time.time()
            if bounds[0] <= t < bounds[-1]:
                counts[min(int((t - bounds[0]) / window_s), n - 1)] += done

    await asyncio.gather(*(loop() for _ in range(clients)))
    return [c / window_s for c in counts]


async def drain_rate(
    run_worker: Callable[[], Awaitable[None]],
    stop: Callable[[asyncio.Task[None]], Awaitable[None]],
    completed: list[float],
    warmup_s: float,
    window_s: float,
    n: int,
) -> list[float]:
    """Jobs/s of a worker working off a prefilled queue, from the jobs' own completion times."""
    task: asyncio.Task[None] = asyncio.ensure_future(run_worker())
    started = time.time()
    try:
        while not completed and time.time() - started < 30:  # noqa: ASYNC110 - a list, no event
            await asyncio.sleep(0.01)
        first = time.time() + warmup_s
        bounds = [first + i * window_s for i in range(n + 1)]
        await asyncio.sleep(max(0.0, bounds[-1] - time.time()))
    finally:
        await stop(task)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=15)
    counts = [0] * n
    for t in completed:
        if bounds[0] <= t < bounds[-1]:
            counts[min(int((t - bounds[0]) / window_s), n - 1)] += 1
    return [c / window_s for c in counts]


def _pickup_stats(samples: list[float]) -> tuple[float, float, float]:
    ms = [s * 1000 for s in samples]
    return percentile(ms, 50), percentile(ms, 95), percentile(ms, 99)


# --- procrastinate ----------------------------------------------------------------------------


async def _procrastinate(
    dsn: str, clients: int, windows: tuple[float, float, int], fill: int
) -> list[Figure]:
    import procrastinate

    warm, win, n = windows
    figs: list[Figure] = []
    completed: list[float] = []
    pickups: list[float] = []

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=clients)
    )

    @app.task(name="noop", queue="bench")
    async def noop(payload: dict[str, Any]) -> None:
        completed.append(time.time())

    picked = asyncio.Event()

    @app.task(name="pickup", queue="bench")
    async def pickup(t: float) -> None:
        pickups.append(time.time() - t)
        picked.set()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        version = procrastinate.__version__ if hasattr(procrastinate, "__version__") else "?"

        async def one() -> int:
            await noop.defer_async(payload=PAYLOAD)
            return 1

        async def batch() -> int:
            await noop.batch_defer_async(*([{"payload": PAYLOAD}] * BATCH))
            return BATCH

        figs.append(
            figure(
                "procrastinate enqueue, single, 1 client",
                await windowed(one, 1, warm, win, n),
                "jobs/s",
            )
        )
        figs.append(
            figure(
                f"procrastinate enqueue, single, {clients} clients",
                await windowed(one, clients, warm, win, n),
                "jobs/s",
            )
        )
        figs.append(
            figure(
                f"procrastinate enqueue, batches of {BATCH}, 1 client",
                await windowed(batch, 1, warm, win, n),
                "jobs/s",
            )
        )

        best: Figure | None = None
        tried: list[str] = []
        for concurrency in (10, 50):
            await _procrastinate_clear(app)
            for _ in range(max(1, fill // 1000)):
                await noop.batch_defer_async(*([{"payload": PAYLOAD}] * 1000))
            completed.clear()

            async def run(c: int = concurrency) -> None:
                await app.run_worker_async(
                    queues=["bench"],
                    concurrency=c,
                    wait=True,
                    install_signal_handlers=False,
                    listen_notify=True,
                    delete_jobs="successful",
                )

            async def stop(task: asyncio.Task[None]) -> None:
                task.cancel()

            rates = await drain_rate(run, stop, completed, warm, win, n)
            fig = figure(
                f"procrastinate no-op jobs, 1 worker, concurrency {concurrency}", rates, "jobs/s"
            )
            tried.append(f"concurrency {concurrency}: {fig.value:.0f}/s")
            if best is None or fig.value > best.value:
                best = fig
        assert best is not None
        best.name = "procrastinate no-op jobs, 1 worker (best)"
        best.note = "; ".join(tried)
        figs.append(best)

        # Idle pickup: an idle worker with LISTEN/NOTIFY, one job at a time.
        await _procrastinate_clear(app)
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=["bench"],
                concurrency=1,
                wait=True,
                install_signal_handlers=False,
                listen_notify=True,
            )
        )
        await asyncio.sleep(1.0)
        for _ in range(PICKUP_SAMPLES):
            picked.clear()
            await pickup.defer_async(t=time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(picked.wait(), timeout=5)
            await asyncio.sleep(PICKUP_GAP_S)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(worker, timeout=15)
        p50, p95, p99 = _pickup_stats(pickups)
        figs.append(
            Figure(
                "procrastinate idle pickup latency p50",
                p50,
                "ms",
                note=f"p95 {p95:.1f} ms, p99 {p99:.1f} ms, {len(pickups)} samples",
            )
        )
    for f in figs:
        f.note = (f.note + f" (procrastinate {version})").strip()
    return figs


async def _procrastinate_clear(app: Any) -> None:
    await app.connector.execute_query_async("delete from procrastinate_jobs")


# --- pgqueuer ---------------------------------------------------------------------------------


async def _pgqueuer(
    url: str, clients: int, windows: tuple[float, float, int], fill: int
) -> list[Figure]:
    import asyncpg
    import pgqueuer
    from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    warm, win, n = windows
    figs: list[Figure] = []
    body = json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).encode()

    conn = await asyncpg.connect(url)
    await Queries(AsyncpgDriver(conn)).install()
    single = Queries(AsyncpgDriver(conn))
    pool = await asyncpg.create_pool(url, min_size=clients, max_size=clients)
    pooled = Queries(AsyncpgPoolDriver(pool))

    async def one() -> int:
        await single.enqueue("noop", body)
        return 1

    async def one_pooled() -> int:
        await pooled.enqueue("noop", body)
        return 1

    async def batch() -> int:
        await single.enqueue(["noop"] * BATCH, [body] * BATCH, [0] * BATCH)
        return BATCH

    figs.append(
        figure("pgqueuer enqueue, single, 1 client", await windowed(one, 1, warm, win, n), "jobs/s")
    )
    figs.append(
        figure(
            f"pgqueuer enqueue, single, {clients} clients",
            await windowed(one_pooled, clients, warm, win, n),
            "jobs/s",
        )
    )
    figs.append(
        figure(
            f"pgqueuer enqueue, batches of {BATCH}, 1 client",
            await windowed(batch, 1, warm, win, n),
            "jobs/s",
        )
    )
    await pool.close()

    best: Figure | None = None
    tried: list[str] = []
    for batch_size in (10, 50):
        await single.clear_queue()
        for _ in range(max(1, fill // 1000)):
            await single.enqueue(["noop"] * 1000, [body] * 1000, [0] * 1000)
        completed: list[float] = []
        qconn = await asyncpg.connect(url)
        qm = QueueManager(Queries(AsyncpgDriver(qconn)))

        @qm.entrypoint("noop")
        async def noop(job: Any, _done: list[float] = completed) -> None:
            _done.append(time.time())

        async def run(_qm: Any = qm, _bs: int = batch_size) -> None:
            await _qm.run(batch_size=_bs, mode=QueueExecutionMode.continuous)

        async def stop(_task: asyncio.Task[None], _qm: Any = qm) -> None:
            _qm.shutdown.set()

        rates = await drain_rate(run, stop, completed, warm, win, n)
        await qconn.close()
        fig = figure(f"pgqueuer no-op jobs, 1 worker, batch_size {batch_size}", rates, "jobs/s")
        tried.append(f"batch_size {batch_size}: {fig.value:.0f}/s")
        if best is None or fig.value > best.value:
            best = fig
    assert best is not None
    best.name = "pgqueuer no-op jobs, 1 worker (best)"
    best.note = "; ".join(tried)
    figs.append(best)

    # Idle pickup.
    await single.clear_queue()
    pickups: list[float] = []
    picked = asyncio.Event()
    qconn = await asyncpg.connect(url)
    qm = QueueManager(Queries(AsyncpgDriver(qconn)))

    @qm.entrypoint("pickup")
    async def pickup(job: Any) -> None:
        pickups.append(time.time() - float(job.payload.decode()))
        picked.set()

    worker = asyncio.create_task(qm.run(batch_size=10))
    await asyncio.sleep(1.0)
    for _ in range(PICKUP_SAMPLES):
        picked.clear()
        await single.enqueue("pickup", str(time.time()).encode())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(picked.wait(), timeout=5)
        await asyncio.sleep(PICKUP_GAP_S)
    qm.shutdown.set()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(worker, timeout=15)
    await qconn.close()
    await conn.close()
    p50, p95, p99 = _pickup_stats(pickups)
    figs.append(
        Figure(
            "pgqueuer idle pickup latency p50",
            p50,
            "ms",
            note=f"p95 {p95:.1f} ms, p99 {p99:.1f} ms, {len(pickups)} samples",
        )
    )
    for f in figs:
        f.note = (f.note + f" (pgqueuer {pgqueuer.__version__}, asyncpg)").strip()
    return figs


# Jobs queued before a no-op drain: enough for warm-up and the windows at the rates each
# reaches here, without spending the time budget on filling.
FILL = {"procrastinate": 4_000, "pgqueuer": 40_000}


def run_peers(server: PgServer, clients: int, windows: tuple[float, float, int]) -> list[Figure]:
    figs: list[Figure] = []
    for label, fn in (("procrastinate", _procrastinate), ("pgqueuer", _pgqueuer)):
        fill = FILL[label]
        log(f"peers: {label}")
        try:
            with scratch_db(server, label[:5], migrated=False) as dsn:
                dbname = dsn.split("dbname=")[1].split()[0]
                target = dsn if label == "procrastinate" else server.url(dbname)
                figs.extend(asyncio.run(fn(target, clients, windows, fill)))
        except ImportError as exc:
            log(f"peers: {label} not installed ({exc}); pip install -e '.[bench]'")
    return figs
