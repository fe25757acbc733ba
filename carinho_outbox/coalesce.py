"""Concurrent calls folded into one statement ("smart batching": no timer, no added wait).

A call that finds a free slot (fewer than `max_inflight` runs in flight) runs at once; calls
that arrive while every slot is busy queue, and the next free slot takes them all (up to
`max_items`) in one run. Under light load nothing waits and a call runs alone, through
`single`; under heavy load one round trip carries many items, so the per-item cost of a
statement (client CPU in psycopg, the commit, the pool checkout) falls as the load rises.

Used by the web process for `POST /events` (ingress.py): with 16 clients the events of
concurrent requests are written by one `ingest_batch` statement instead of one
`ingest_event` each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import psycopg

T = TypeVar("T")
R = TypeVar("R")


def certainly_rolled_back(exc: BaseException) -> bool:
    """The statement failed inside Postgres and its transaction is gone, so each item can be
    retried alone. Not for connection errors: a commit whose reply was lost may have
    happened, and a retry of an event without an idempotency key would write it twice."""
    return isinstance(exc, psycopg.DatabaseError) and not isinstance(
        exc, psycopg.OperationalError | psycopg.InterfaceError
    )


class Coalescer(Generic[T, R]):
    """`await submit(item)` returns what `run` (or `single`) gave for that item.

    `run(items)` answers one result per item, in order. When a run of several items fails
    with an error that certainly rolled it back (a bad item that slipped past validation),
    each item is retried alone through `single`, so one poison item fails only its own call.
    A caller cancelled before its item is taken is left out of the run.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        single: Callable[[T], Awaitable[R]],
        *,
        max_items: int,
        max_inflight: int = 2,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """on_idle: called when the last run in flight ends with nothing queued (a keyed
        owner drops the coalescer then, so idle keys cost no memory)."""
        if max_items < 1 or max_inflight < 1:
            raise ValueError("max_items and max_inflight must be at least 1")
        self._run = run
        self._single = single
        self._on_idle = on_idle
        self.max_items = max_items
        self.max_inflight = max_inflight
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Figures for tests and metrics: runs made and items they carried.
        self.runs = 0
        self.items = 0

    @property
    def idle(self) -> bool:
        return self._inflight == 0 and not self._queue

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._inflight < self.max_inflight:
            self._inflight += 1
            # A task of its own: a caller cancelled mid-run (client gone, request deadline)
            # must not cancel the statement that carries everyone else's events.
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken: list[tuple[T, asyncio.Future[R]]] = []
                while self._queue and len(taken) < self.max_items:
                    pair = self._queue.popleft()
                    if not pair[1].done():  # cancelled while queued: nobody waits for it
                        taken.append(pair)
                if taken:
                    await self._carry(taken)
        except asyncio.CancelledError:
            # Only at shutdown: nobody is left to run what is queued.
            while self._queue:
                self._queue.popleft()[1].cancel()
            raise
        finally:
            self._inflight -= 1
            if self._on_idle is not None and self.idle:
                self._on_idle()

    async def _carry(self, taken: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in taken]
        self.runs += 1
        self.items += len(items)
        try:
            results = await (self._run(items) if len(items) > 1 else self._one(items[0]))
        except asyncio.CancelledError:
            for _, fut in taken:
                fut.cancel()
            raise
        except Exception as exc:
            if len(items) > 1 and certainly_rolled_back(exc):
                await asyncio.gather(*(self._alone(item, fut) for item, fut in taken))
                return
            for _, fut in taken:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(taken, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def _one(self, item: T) -> list[R]:
        return [await self._single(item)]

    async def _alone(self, item: T, fut: asyncio.Future[R]) -> None:
        try:
            result = await self._single(item)
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(result)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let runs in flight finish (their callers are owed an answer), bounded in time."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*self._tasks, return_exceptions=True), timeout_s
                )
