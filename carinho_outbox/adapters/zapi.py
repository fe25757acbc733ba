"""The `whatsapp` channel: Z-API's send-text, send-button-list and send-option-list.

``POST {ZAPI_BASE_URL}/instances/{ZAPI_INSTANCE_ID}/token/{ZAPI_TOKEN}/<endpoint>`` with the
``Client-Token`` header (ZAPI_CLIENT_TOKEN). The URL carries the instance token, so neither
the URL nor an exception text that may quote it ever reaches an attempt row or a log.

A send is done only when Z-API answers with a ``messageId``: it becomes the delivery's
external_id, which is what Z-API's status and delivery callbacks name (the whole answer,
zaapId included, stays in the attempt's response). How Z-API's answers are classified:

- 2xx with ``messageId`` → delivered.
- 2xx with ``{"value": false}`` → retry. Z-API answers this when the instance cannot send
  right now (phone offline, session reconnecting, instance restarting): nothing was queued,
  and the same request succeeds once the phone is back, so it is a transient failure that the
  backoff (then the DLQ) handles.
- 2xx without a ``messageId`` → retry: nothing proves the message was accepted.
- 400 "your client-token is not configured" / "null not allowed" → permanent: the account
  demands a Client-Token we do not send (or a wrong one); every send would fail the same way
  until ZAPI_CLIENT_TOKEN is fixed, then the DLQ is reprocessed.
- 401, 403 ("[IP request] not allowed", wrong token), 404 (unknown instance) and other 4xx
  → permanent (configuration); 408, 409, 425, 429 (with Retry-After) and 5xx, timeouts and
  connection errors → retry.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from ..branding import Branding
from ..contacts import Audience, RecipientUnknown, skipped
from ..masking import mask_text
from ..messages import MessageError, template_for, whatsapp_message
from ..records import Job, SendResult
from ..retry import classify_http, parse_retry_after

RESPONSE_READ_LIMIT_BYTES = 2048
CHANNEL = "whatsapp"


def classify_zapi(status: int, body: bytes) -> tuple[str, str | None, str | None]:
    """(kind: ok | retry | permanent, error, messageId) for one Z-API answer. Pure."""
    try:
        doc: Any = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        doc = None
    if 200 <= status < 300:
        message_id = doc.get("messageId") if isinstance(doc, dict) else None
        if isinstance(message_id, str) and message_id.strip():
            return "ok", None, message_id
        if isinstance(doc, dict) and doc.get("value") is False:
            return "retry", "Z-API answered value=false: the instance cannot send now", None
        return "retry", f"HTTP {status} without messageId", None
    detail = doc.get("error") if isinstance(doc, dict) else None
    detail = detail if isinstance(detail, str) else ""
    if status == 400 and ("client-token" in detail.lower() or "null not allowed" in detail):
        return "permanent", "Z-API client-token missing or not configured (ZAPI_CLIENT_TOKEN)", None
    kind = classify_http(status)
    error = f"HTTP {status}" + (f": {detail[:200]}" if detail else "")
    return ("retry" if kind == "retry" else "permanent"), error, None


def phone_digits(data: dict[str, Any], phone: str) -> str:
    """Z-API wants bare digits (5541999998888); a mapping may have produced them already."""
    given = data.get("phone_digits")
    if isinstance(given, str) and given.isdigit():
        return given
    return "".join(ch for ch in phone if ch.isdigit())


class ZapiAdapter:
    name = CHANNEL

    def __init__(
        self,
        *,
        base_url: str,
        instance_id: str,
        token: str,
        client_token: str | None,
        client: httpx.AsyncClient,
        timeout_s: float,
        branding: Branding,
        audience: Audience,
    ) -> None:
        self._root = f"{base_url.rstrip('/')}/instances/{instance_id}/token/{token}"
        self._client_token = client_token
        self.client = client
        self._timeout = httpx.Timeout(timeout_s)
        self.branding = branding
        self.audience = audience

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult:
        started = time.perf_counter()
        try:
            template = template_for(job.type, CHANNEL, data)
            recipient = await self.audience.recipient(job.type, data)
        except (MessageError, RecipientUnknown) as exc:
            # No retry can find a template or a contact that is not there; an operator fixes
            # it and reprocesses the dead letter.
            return SendResult(ok=False, permanent=True, error=str(exc))
        if recipient.blocked:
            return skipped(recipient.blocked, CHANNEL, started)
        if not recipient.phone:
            return skipped("no phone", CHANNEL, started)
        message = whatsapp_message(
            template,
            self.branding,
            phone_digits=phone_digits(data, recipient.phone),
            name=recipient.name,
        )
        if template == "feedback_request":
            # Recorded before the send: a reply can only come after it, and the reply is
            # matched to the service through this row.
            await self.audience.feedback_requested(data=data, recipient=recipient, channel=CHANNEL)
        summary = f"POST z-api {message.endpoint} to {mask_text(recipient.phone)}"
        headers = {"content-type": "application/json", "user-agent": "carinho-outbox"}
        if self._client_token:
            headers["client-token"] = self._client_token
        try:
            response = await self.client.post(
                f"{self._root}/{message.endpoint}",
                content=json.dumps(message.body, ensure_ascii=False).encode(),
                headers=headers,
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
            return SendResult(
                ok=False,
                error=f"connection error: {type(exc).__name__}",
                request_summary=summary,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        body = response.content[:RESPONSE_READ_LIMIT_BYTES]
        kind, error, message_id = classify_zapi(response.status_code, body)
        return SendResult(
            ok=kind == "ok",
            permanent=kind == "permanent",
            http_status=response.status_code,
            error=error,
            response=mask_text(body.decode("utf-8", "replace")),
            retry_after_s=parse_retry_after(response.headers.get("retry-after"), time.time()),
            request_summary=summary,
            external_id=message_id,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        """The shared client is closed by whoever created it."""
