"""Slack and Discord incoming webhooks: where operator alerts go (ALERT_SLACK_WEBHOOK_URL,
ALERT_DISCORD_WEBHOOK_URL).

An alert is an ordinary `alert.raised` delivery, so it is retried with backoff, honours
Retry-After (both services send it on 429) and dead-letters like any other. The webhook URL
is the secret, so it never appears in attempt rows or logs.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from ..records import Job, SendResult
from ..retry import classify_http, parse_retry_after

RESPONSE_READ_LIMIT_BYTES = 2048
SLACK_TEXT_LIMIT = 3000  # one section's text; the message stays readable on a phone
DISCORD_CONTENT_LIMIT = 2000  # Discord refuses longer content with a 400
DISCORD_USERNAME = "Carinho Hub"
EMOJI = {"firing": "🔴", "repeat": "🔴", "resolved": "✅"}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def headline(data: dict[str, Any]) -> str:
    emoji = EMOJI.get(str(data.get("state")), "🔔")
    return f"{emoji} [{data.get('hub', 'carinho-hub')}] {data.get('title', 'alerta')}"


def slack_body(data: dict[str, Any]) -> dict[str, Any]:
    text = f"*{headline(data)}*"
    if data.get("text"):
        text += f"\n{data['text']}"
    return {"text": _clip(text, SLACK_TEXT_LIMIT)}


def discord_body(data: dict[str, Any]) -> dict[str, Any]:
    content = f"**{headline(data)}**"
    if data.get("text"):
        content += f"\n{data['text']}"
    return {
        "content": _clip(content, DISCORD_CONTENT_LIMIT),
        "username": DISCORD_USERNAME,
        # Error texts come from outside: they must never ping @everyone or a role.
        "allowed_mentions": {"parse": []},
    }


BODIES = {"slack": slack_body, "discord": discord_body}


class ChatAdapter:
    def __init__(self, name: str, url: str, client: httpx.AsyncClient, timeout_s: float) -> None:
        if name not in BODIES:
            raise ValueError(f"unknown chat destination {name!r}")
        self.name = name
        self.url = url
        self.client = client
        self._timeout = httpx.Timeout(timeout_s)

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult:
        body = BODIES[self.name](data)
        summary = f"POST {self.name} incoming webhook"
        started = time.perf_counter()
        try:
            response = await self.client.post(
                self.url,
                json=body,
                headers={"user-agent": "carinho-outbox"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            return SendResult(
                ok=False,
                error=f"timeout: {type(exc).__name__}",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        except httpx.HTTPError as exc:
            # The exception text can carry the URL (the secret): keep only its type.
            return SendResult(
                ok=False,
                error=f"connection error: {type(exc).__name__}",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        kind = classify_http(response.status_code)
        return SendResult(
            ok=kind == "ok",
            permanent=kind == "permanent",
            http_status=response.status_code,
            error=None if kind == "ok" else f"HTTP {response.status_code}",
            response=response.content[:RESPONSE_READ_LIMIT_BYTES].decode("utf-8", "replace"),
            retry_after_s=parse_retry_after(response.headers.get("retry-after"), time.time()),
            request_summary=summary,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        """The shared client is closed by whoever created it."""


def build_chat_adapters(
    slack_url: str | None, discord_url: str | None, client: httpx.AsyncClient, timeout_s: float
) -> dict[str, ChatAdapter]:
    out: dict[str, ChatAdapter] = {}
    if slack_url:
        out["slack"] = ChatAdapter("slack", slack_url, client, timeout_s)
    if discord_url:
        out["discord"] = ChatAdapter("discord", discord_url, client, timeout_s)
    return out
