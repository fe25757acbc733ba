"""Comparisons (benchmark only): `carinho-worker` with its HTTP clients swapped, chosen by
BENCH_PROTO_CLIENT, so that one `make bench` run measures what each client costs:

- `aiohttp`: the webhook destinations go through aiohttp (one shared ClientSession, what the
  worker used before adapters/http1.py) instead of the worker's own HTTP/1.1 client; the same
  signed envelope, the same timeouts and error mapping;
- `sharded`: the low-volume adapters' httpx client split over small pools (8 connections
  each) plus the sniffio fix; it does not touch the webhook path any more (kept so earlier
  results stay comparable).

Nothing here is imported by the product.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import httpx

from .. import signing, worker_cli
from ..adapters.webhook import RESPONSE_READ_LIMIT_BYTES, WebhookAdapter
from ..envelope import encode, envelope, webhook_id
from ..records import Job, SendResult
from ..registry import build_adapters
from ..retry import classify_http, parse_retry_after
from ..settings import DestinationConfig, Settings
from ..store import Store

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


class AiohttpSession:
    """One aiohttp ClientSession for every webhook destination, opened on first use."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._session: Any = None

    def get(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.concurrency, limit_per_host=0, ttl_dns_cache=300
                ),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class AiohttpWebhookAdapter:
    """The webhook adapter over aiohttp, with the same per-destination preparation."""

    def __init__(self, config: DestinationConfig, session: AiohttpSession) -> None:
        import aiohttp
        from yarl import URL

        self.name = config.name
        self.config = config
        self.session = session
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._url = URL(config.url or "")
        self._headers = {"content-type": "application/json", "user-agent": "carinho-outbox"}
        if config.token:
            self._headers["authorization"] = f"Bearer {config.token.get_secret_value()}"
        secret = config.secret.get_secret_value() if config.secret else None
        self._signer = signing.Signer(secret) if secret else None

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult:
        import aiohttp

        body = encode(envelope(job, data))
        msg_id = webhook_id(job)
        timestamp = int(time.time())
        headers = self._headers.copy()
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(timestamp)
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(msg_id, timestamp, body)
        summary = f"POST {self.config.url} {len(body)}B"
        started = time.perf_counter()
        try:
            async with self.session.get().post(
                self._url, data=body, headers=headers, timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.content.read(RESPONSE_READ_LIMIT_BYTES)
                retry_after = response.headers.get("retry-after")
        except TimeoutError:
            return SendResult(
                ok=False,
                error=f"timeout: no complete answer within {self.config.timeout_s:g}s",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        except aiohttp.ClientError as exc:
            return SendResult(
                ok=False,
                error=f"connection error: {type(exc).__name__}: {exc}",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        kind = classify_http(status)
        return SendResult(
            ok=kind == "ok",
            permanent=kind == "permanent",
            http_status=status,
            error=None if kind == "ok" else f"HTTP {status}",
            response=raw.decode("utf-8", "replace"),
            retry_after_s=parse_retry_after(retry_after, time.time()) if retry_after else None,
            request_summary=summary,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        await self.session.close()


def aiohttp_adapters(
    settings: Settings, client: httpx.AsyncClient, store: Store
) -> dict[str, Any]:
    adapters: dict[str, Any] = dict(build_adapters(settings, client, store))
    session = AiohttpSession(settings.worker_concurrency)
    for name, adapter in adapters.items():
        if isinstance(adapter, WebhookAdapter):
            adapters[name] = AiohttpWebhookAdapter(adapter.config, session)
    return adapters


def main(argv: list[str] | None = None) -> None:
    kind = os.environ.get("BENCH_PROTO_CLIENT", "sharded")
    if kind == "aiohttp":
        # worker_cli looks build_adapters up in its own namespace at call time.
        worker_cli.build_adapters = aiohttp_adapters  # type: ignore[assignment]
    else:
        worker_cli.http_client = sharded_client  # type: ignore[assignment]
    worker_cli.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
