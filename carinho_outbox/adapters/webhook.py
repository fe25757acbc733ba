"""HTTP destinations (CRM, Operacao, Financeiro, Marketing, Cuidadores, Atendimento): a signed
POST per DESIGN.md §5.

This is the hot path, so it uses its own lean HTTP/1.1 client (http1.py) rather than httpx or
aiohttp: with ~100 deliveries in flight, httpx's pool bookkeeping took ~75% of a worker's CPU
(encode/httpx#3215), and aiohttp, 6x faster than that, still spent more CPU per request than
the rest of the engine. Everything about a destination that does not change per delivery (the
request line, the fixed headers, the keyed HMAC, the connection pool) is prepared once here.
The low-volume adapters keep httpx.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from .. import signing
from ..envelope import encode, envelope, webhook_id
from ..records import Job, SendResult
from ..retry import classify_http, parse_retry_after
from ..settings import DestinationConfig
from .http1 import ConnectionFailed, Http1Client, OriginPool, Target

RESPONSE_READ_LIMIT_BYTES = 4096


class SharedSession:
    """One HTTP client for every HTTP destination of a process, made on first use (so
    building the adapters just to list them opens nothing) and closed once."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._client: Http1Client | None = None

    def get(self) -> Http1Client:
        if self._client is None:
            self._client = Http1Client(
                max_idle_per_origin=self.concurrency, keep_bytes=RESPONSE_READ_LIMIT_BYTES
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _header_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} contains a line break")
    return value


class WebhookAdapter:
    def __init__(self, config: DestinationConfig, session: SharedSession) -> None:
        if not config.url:
            raise ValueError(f"destination {config.name} has no URL")
        self.name = config.name
        self.config = config
        self.session = session
        self.timeout_s = config.timeout_s
        try:
            target = Target.parse(config.url)
        except ValueError as exc:
            raise ValueError(f"destination {config.name}: {exc}") from None
        self._target = target
        lines = [
            f"POST {target.path} HTTP/1.1",
            f"host: {target.host_header}",
            "content-type: application/json",
            "user-agent: carinho-outbox",
        ]
        if config.token:
            token = _header_value("authorization", config.token.get_secret_value())
            lines.append(f"authorization: Bearer {token}")
        elif target.userinfo is not None:
            # Credentials in the URL: HTTP Basic, as aiohttp sent them.
            pair = ":".join(target.userinfo).encode()
            lines.append(f"authorization: Basic {base64.b64encode(pair).decode('ascii')}")
        # The request head up to the per-delivery headers, encoded once.
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        secret = config.secret.get_secret_value() if config.secret else None
        self._signer = signing.Signer(secret) if secret else None
        # Never the URL as configured: credentials in it must not reach the attempt rows.
        self._summary_prefix = f"POST {target.scheme}://{target.host_header}{target.path} "
        self._client: Http1Client | None = None
        self._pool: OriginPool | None = None

    def _origin(self) -> OriginPool:
        client = self.session.get()
        if client is not self._client or self._pool is None:
            self._client, self._pool = client, client.pool(self._target)
        return self._pool

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult:
        body = encode(envelope(job, data))
        msg_id = webhook_id(job)
        timestamp = int(time.time())
        head = f"webhook-id: {msg_id}\r\nwebhook-timestamp: {timestamp}\r\n"
        if self._signer is not None:
            head += f"webhook-signature: {self._signer.sign(msg_id, timestamp, body)}\r\n"
        head += f"content-length: {len(body)}\r\n\r\n"
        summary = f"{self._summary_prefix}{len(body)}B"
        started = time.perf_counter()
        try:
            answer = await self._origin().request(
                self._head + head.encode("latin-1") + body, self.timeout_s
            )
        except TimeoutError:
            return SendResult(
                ok=False,
                error=f"timeout: no complete answer within {self.timeout_s:g}s",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        except (ConnectionFailed, OSError) as exc:
            return SendResult(
                ok=False,
                error=f"connection error: {exc}",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        elapsed_ms = (time.perf_counter() - started) * 1000
        status = answer.status
        kind = classify_http(status)
        retry_after = answer.retry_after
        return SendResult(
            ok=kind == "ok",
            permanent=kind == "permanent",
            http_status=status,
            error=None if kind == "ok" else f"HTTP {status}",
            response=answer.body.decode("utf-8", "replace"),
            retry_after_s=parse_retry_after(retry_after, time.time()) if retry_after else None,
            request_summary=summary,
            duration_ms=elapsed_ms,
        )

    async def aclose(self) -> None:
        await self.session.close()
