"""Prototypes (benchmark only): `carinho-worker` with its HTTP client swapped.

Profiles of the worker against a no-op receiver put ~75% of its CPU inside httpx/httpcore:
one httpx.AsyncClient with 100 connections spends its time in its own pool bookkeeping once
tens of requests are in flight (encode/httpx#3215), and httpcore re-tries `import sniffio` on
every request when sniffio is not installed (a failed import walks sys.path each time). This
module runs the real worker with one of two replacements, chosen by BENCH_PROTO_CLIENT:

- `sharded`: the same connection budget split over small httpx clients (8 connections each),
  each request going to the least busy one, plus the sniffio fix;
- `aiohttp`: an aiohttp ClientSession behind the slice of the httpx API the adapters use.

Nothing here is imported by the product; it shows what the change would buy.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx

from .. import worker_cli
from ..settings import Settings

CONNECTIONS_PER_SHARD = 8


def _fix_sniffio() -> None:
    try:
        import sniffio  # noqa: F401
    except ImportError:
        import httpcore._synchronization as sync

        # httpcore asks sniffio which event loop runs; without sniffio it re-imports on every
        # request. The worker only ever runs on asyncio.
        sync.current_async_library = lambda: "asyncio"  # type: ignore[assignment]


class ShardedClient:
    """The subset of httpx.AsyncClient the adapters use, spread over small pools."""

    def __init__(self, shards: list[httpx.AsyncClient]) -> None:
        self.shards = shards
        self.busy = [0] * len(shards)

    async def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        busy = self.busy
        i = busy.index(min(busy))
        busy[i] += 1
        try:
            return await self.shards[i].request(method, url, **kw)
        finally:
            busy[i] -= 1

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", url, **kw)

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", url, **kw)

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


def sharded_client(settings: Settings, concurrency: int) -> ShardedClient:
    _fix_sniffio()
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


class _Response:
    """What the adapters read from an httpx.Response."""

    def __init__(self, status_code: int, content: bytes, headers: Any) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)


class AiohttpClient:
    """aiohttp behind the httpx calls the adapters make; errors mapped to httpx's classes."""

    def __init__(self, settings: Settings, concurrency: int) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self._session: Any = None

    def _get_session(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s),
                auto_decompress=True,
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        json: Any = None,
        headers: Any = None,
        timeout: Any = None,  # noqa: ASYNC109 - httpx's signature, mirrored
        **_: Any,
    ) -> _Response:
        import aiohttp

        total = self.settings.request_timeout_s
        if isinstance(timeout, httpx.Timeout) and timeout.read is not None:
            total = timeout.read
        elif isinstance(timeout, int | float):
            total = float(timeout)
        session = self._get_session()
        try:
            async with session.request(
                method,
                url,
                data=content,
                json=json,
                headers=dict(headers or {}),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=total),
            ) as r:
                body = await r.content.read(64 * 1024)
                return _Response(r.status, body, r.headers)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timeout") from exc
        except aiohttp.ClientError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc

    async def post(self, url: str, **kw: Any) -> _Response:
        return await self.request("POST", url, **kw)

    async def get(self, url: str, **kw: Any) -> _Response:
        return await self.request("GET", url, **kw)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def aiohttp_client(settings: Settings, concurrency: int) -> AiohttpClient:
    return AiohttpClient(settings, concurrency)


def main(argv: list[str] | None = None) -> None:
    kind = os.environ.get("BENCH_PROTO_CLIENT", "sharded")
    factory = {"sharded": sharded_client, "aiohttp": aiohttp_client}[kind]
    worker_cli.http_client = factory  # type: ignore[assignment]
    worker_cli.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
