"""HTTP destinations (CRM, Operacao, Financeiro, Marketing, Cuidadores, Atendimento): a signed
POST per DESIGN.md §5."""

from __future__ import annotations

import time
from typing import Any

import httpx

from .. import signing
from ..envelope import encode, envelope, webhook_id
from ..records import Job, SendResult
from ..retry import classify_http, parse_retry_after
from ..settings import DestinationConfig

RESPONSE_READ_LIMIT_BYTES = 4096


class WebhookAdapter:
    def __init__(self, config: DestinationConfig, client: httpx.AsyncClient) -> None:
        if not config.url:
            raise ValueError(f"destination {config.name} has no URL")
        self.name = config.name
        self.config = config
        self.client = client
        self._timeout = httpx.Timeout(config.timeout_s)

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
            response = await self.client.post(
                self.config.url or "", content=body, headers=headers, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            return SendResult(
                ok=False,
                error=f"timeout: {type(exc).__name__}",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        except httpx.HTTPError as exc:
            return SendResult(
                ok=False,
                error=f"connection error: {type(exc).__name__}: {exc}",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        elapsed_ms = (time.perf_counter() - started) * 1000
        kind = classify_http(response.status_code)
        text = response.content[:RESPONSE_READ_LIMIT_BYTES].decode("utf-8", "replace")
        return SendResult(
            ok=kind == "ok",
            permanent=kind == "permanent",
            http_status=response.status_code,
            error=None if kind == "ok" else f"HTTP {response.status_code}",
            response=text,
            retry_after_s=parse_retry_after(response.headers.get("retry-after"), time.time()),
            request_summary=summary,
            duration_ms=elapsed_ms,
        )

    async def aclose(self) -> None:
        """The shared client is closed by whoever created it."""
