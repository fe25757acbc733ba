"""Prototype (benchmark only): `carinho-worker` with its HTTP client sharded.

One httpx.AsyncClient with 100 connections spends most of its time in its own pool
bookkeeping once tens of requests are in flight (encode/httpx#3215): on this machine the same
loop does ~700 POST/s at 10 connections and ~130 at 100. Splitting the same connection budget
over several small clients, each request going to the least busy one, keeps every pool short.
This module runs the real worker with that client swapped in, so `make bench` can show what
the change buys before anyone edits registry.py.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx

from .. import worker_cli
from ..settings import Settings

CONNECTIONS_PER_SHARD = 8


class ShardedClient:
    """The subset of httpx.AsyncClient the adapters use, spread over small pools."""

    def __init__(self, shards: list[httpx.AsyncClient]) -> None:
        self.shards = shards
        self.busy = [0] * len(shards)

    def _pick(self) -> int:
        busy = self.busy
        return busy.index(min(busy))

    async def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        i = self._pick()
        self.busy[i] += 1
        try:
            return await self.shards[i].request(method, url, **kw)
        finally:
            self.busy[i] -= 1

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", url, **kw)

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", url, **kw)

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shards[0], name)


def sharded_client(settings: Settings, concurrency: int) -> ShardedClient:
    count = max(1, -(-concurrency // CONNECTIONS_PER_SHARD))
    per = max(1, -(-concurrency // count))
    return ShardedClient(
        [
            httpx.AsyncClient(
                timeout=httpx.Timeout(settings.request_timeout_s),
                limits=httpx.Limits(max_connections=per, max_keepalive_connections=per),
                follow_redirects=False,
            )
            for _ in range(count)
        ]
    )


def main(argv: list[str] | None = None) -> None:
    worker_cli.http_client = sharded_client  # type: ignore[assignment]
    worker_cli.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
