"""HTTP destinations (CRM, Operacao, Financeiro, Marketing, Cuidadores, Atendimento): a signed
POST per DESIGN.md §5.

This is the hot path, so it uses aiohttp rather than httpx: with ~100 connections open on one
client, httpx's pool bookkeeping took ~75% of a worker's CPU in the benchmark (encode/httpx
#3215) and aiohttp did the same work 6x faster. The low-volume adapters keep httpx.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from .. import signing
from ..envelope import encode, envelope, webhook_id
from ..records import Job, SendResult
from ..retry import classify_http, parse_retry_after
from ..settings import DestinationConfig

RESPONSE_READ_LIMIT_BYTES = 4096


def webhook_session(concurrency: int) -> aiohttp.ClientSession:
    """One session per worker process, shared by every HTTP destination (create it inside
    the running event loop)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=300),
        # Per-request timeouts come from each destination's config.
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )


class SharedSession:
    """One aiohttp session for every HTTP destination of a process, opened on first use (so
    building the adapters just to list them opens nothing) and closed once."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = webhook_session(self.concurrency)
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class WebhookAdapter:
    def __init__(self, config: DestinationConfig, session: SharedSession) -> None:
        if not config.url:
            raise ValueError(f"destination {config.name} has no URL")
        self.name = config.name
        self.config = config
        self.session = session
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult:
        body = encode(envelope(job, data))
        headers = {"content-type": "application/json", "user-agent": "carinho-outbox"}
        secret = self.config.secret.get_secret_value() if self.config.secret else None
        headers.update(signing.headers(secret, webhook_id(job), body))
        if self.config.token:
            headers["authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        summary = f"POST {self.config.url} {len(body)}B"
        started = time.perf_counter()
        try:
            async with self.session.get().post(
                self.config.url or "",
                data=body,
                headers=headers,
                timeout=self._timeout,
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
        elapsed_ms = (time.perf_counter() - started) * 1000
        kind = classify_http(status)
        return SendResult(
            ok=kind == "ok",
            permanent=kind == "permanent",
            http_status=status,
            error=None if kind == "ok" else f"HTTP {status}",
            response=raw.decode("utf-8", "replace"),
            retry_after_s=parse_retry_after(retry_after, time.time()),
            request_summary=summary,
            duration_ms=elapsed_ms,
        )

    async def aclose(self) -> None:
        await self.session.close()
