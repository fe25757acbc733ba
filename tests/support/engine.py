"""Helpers to drive the engine in-process: ingest events, run a worker until a condition."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from carinho_outbox.registry import build_adapters, build_policies, http_client
from carinho_outbox.settings import Settings
from carinho_outbox.store import Store
from carinho_outbox.worker import Worker


async def ingest(
    store: Store, event_type: str, payload: dict[str, Any], source: str, **kw: Any
) -> tuple[Any, list[str], bool]:
    return await store.ingest_event(
        type=event_type,
        source=source,
        payload=payload,
        idempotency_key=kw.get("idempotency_key"),
        occurred_at=kw.get("occurred_at"),
        request_id=None,
        client="test",
        extra_delay_s=kw.get("extra_delay_s"),
    )


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, store: Store, dsn: str, **kw: Any
) -> AsyncIterator[Worker]:
    client = http_client(settings, settings.worker_concurrency)
    worker = Worker(
        settings,
        store,
        build_adapters(settings, client, store),
        build_policies(settings),
        dsn=dsn,
        **kw,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.listening.wait(), timeout=10)
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await client.aclose()


async def eventually(
    check: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last value: {last!r})")
