"""`POST /webhooks/whatsapp[/{token}]`: Z-API callbacks.

Z-API does not sign its webhooks, so the URL registered in its panel carries a long secret
(ZAPI_WEBHOOK_TOKEN) in the path, the `token` query parameter or an `X-Webhook-Token` header,
compared in constant time. A proxy in front may add an HMAC of the body
(ZAPI_WEBHOOK_HMAC_SECRET, header ZAPI_WEBHOOK_HMAC_HEADER), verified when configured. A
callback from another Z-API instance (instanceId ≠ ZAPI_INSTANCE_ID) is refused.

What a callback becomes (zapi_inbound.normalize_callback):
- a customer's message → `whatsapp.inbound` (deduplicated on messageId), plus `lead.created`
  (source whatsapp, with the ad attribution) for a phone no lead has yet, in one transaction;
- MessageStatusCallback / DeliveryCallback → the WhatsApp status of the outbound delivery with
  that messageId (`deliveries.channel_status`), no event;
- anything else (our own echoes, groups, newsletters, broadcasts, status replies, connection
  notices) → a log line and 200, because Z-API retries what it sees fail.
Every answer is 200 once authenticated, unless the database is down (503, Z-API retries).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import feedback, metrics
from ..ingress import IngressError
from ..leads import LeadMatch, plan_whatsapp_inbound
from ..payloads import PayloadError, validate_payload
from ..zapi_inbound import ZapiResult, normalize_callback
from .body import parse_json, read_body, require_json
from .errors import ApiError

log = logging.getLogger(__name__)

SOURCE = "zapi"
CLIENT = "zapi-webhook"
TOKEN_HEADER = "x-webhook-token"  # noqa: S105 - a header name, not a secret
MAX_MESSAGE_ID_LEN = 200
MAX_IDS = 100
_STATUS_RE = re.compile(r"^[A-Z_]{1,32}$")


def _clean(text: str, limit: int) -> str:
    # Postgres text refuses NUL; an error message from outside is only ever informative.
    return "".join(ch if ch.isprintable() else " " for ch in text[:limit])


def presented_token(request: Request) -> str | None:
    return (
        request.path_params.get("token")
        or request.query_params.get("token")
        or request.headers.get(TOKEN_HEADER)
    )


def same_secret(presented: str | None, expected: str) -> bool:
    if not presented:
        return False
    # Bytes, so a non-ASCII guess is compared in constant time too instead of raising.
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def hmac_matches(secret: str, header_value: str | None, raw: bytes) -> bool:
    """HMAC-SHA256 of the raw body, as hex or base64, optionally prefixed `sha256=`."""
    if not header_value:
        return False
    value = header_value.strip()
    if value.lower().startswith("sha256="):
        value = value[len("sha256=") :]
    digest = hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).digest()
    candidates: list[bytes] = []
    try:
        candidates.append(bytes.fromhex(value))
    except ValueError:
        pass
    try:
        candidates.append(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        pass
    return any(hmac.compare_digest(c, digest) for c in candidates)


def check_token(request: Request) -> None:
    token = request.app.state.hub.settings.zapi_webhook_token
    if token is None or not token.get_secret_value():
        raise ApiError(503, "not_configured", "the WhatsApp webhook is not configured")
    if not same_secret(presented_token(request), token.get_secret_value()):
        raise ApiError(401, "unauthorized", "missing or wrong webhook token")


def check_body_hmac(request: Request, raw: bytes) -> None:
    settings = request.app.state.hub.settings
    secret = settings.zapi_webhook_hmac_secret
    if secret is None or not secret.get_secret_value():
        return
    header = request.headers.get(settings.zapi_webhook_hmac_header)
    if not hmac_matches(secret.get_secret_value(), header, raw):
        raise ApiError(401, "invalid_signature", "missing or wrong body signature")


def check_instance(result: ZapiResult, body: Any, expected: str | None) -> None:
    # Only a callback that names another instance is refused: that is the misrouting this
    # guards against (a staging number pointed at production). A body without instanceId
    # carries nothing to compare and is classified like any other.
    if expected is None:
        return
    named = body.get("instanceId") if isinstance(body, dict) else None
    if named is not None and str(named) != expected:
        raise ApiError(403, "wrong_instance", "callback from another Z-API instance")


def _moment(result: ZapiResult) -> datetime:
    if result.timestamp:
        try:
            return datetime.fromisoformat(result.timestamp)
        except ValueError:
            pass
    return datetime.now(UTC)


def _ignored(
    request: Request, reason: str, callback_type: str | None, **extra: Any
) -> JSONResponse:
    # A dropped connection stops every WhatsApp flow: worth a warning, not just a trace.
    log.log(
        logging.WARNING if reason == "disconnected" else logging.INFO,
        "zapi callback ignored",
        extra={
            "action": "zapi_ignored",
            "request_id": request.scope["state"].get("request_id"),
            "reason": reason,
            "callback_type": callback_type,
            **extra,
        },
    )
    return JSONResponse({"status": "ignored", "reason": reason})


async def _status(request: Request, result: ZapiResult) -> JSONResponse:
    hub = request.app.state.hub
    if result.kind == "status":
        ids, status, error = list(result.message_ids), result.status or "", None
    else:  # a DeliveryCallback: the send finished, with an error or not
        # Both ids: the sender stores Z-API's messageId, but zaapId names the same send.
        ids = sorted({i for i in (result.message_id, result.zaap_id) if i})
        status = "FAILED" if result.error else "SENT"
        error = _clean(result.error, 500) if result.error else None
    ids = [i for i in ids if len(i) <= MAX_MESSAGE_ID_LEN and i.isprintable()][:MAX_IDS]
    if not ids or not _STATUS_RE.match(status):
        return _ignored(request, "missing_fields", result.callback_type)
    updated, parked = await hub.store.channel_status(
        ids=ids, status=status, status_at=_moment(result), error=error
    )
    log.info(
        "whatsapp status",
        extra={
            "action": "zapi_status",
            "request_id": request.scope["state"].get("request_id"),
            "callback_type": result.callback_type,
            "status": status,
            "updated": updated,
            "parked": parked,
        },
    )
    return JSONResponse({"status": "recorded", "channel_status": status, "updated": updated})


async def _inbound(request: Request, result: ZapiResult, body: dict[str, Any]) -> JSONResponse:
    hub = request.app.state.hub
    state = request.scope["state"]
    try:
        inbound = validate_payload("whatsapp.inbound", result.payload)
    except PayloadError as exc:
        # Z-API would retry a 4xx forever for a message that will never validate.
        return _ignored(
            request,
            "invalid_payload",
            result.callback_type,
            details=[d["path"] for d in exc.details],
        )
    message_id = str(inbound["message_id"])
    if len(message_id) > MAX_MESSAGE_ID_LEN:
        return _ignored(request, "invalid_payload", result.callback_type)
    lid = body.get("senderLid")
    if not (
        isinstance(lid, str) and lid.endswith("@lid") and len(lid) <= 100 and lid.isprintable()
    ):
        lid = None
    if lid is not None and inbound.get("phone_raw") == lid:
        lid = None  # already the raw id
    raw_ids = tuple(sorted({r for r in (inbound.get("phone_raw"), lid) if r}))
    now = datetime.now(UTC)
    # Rating replies and PARAR/SAIR (issue 5), before the message is stored: the greeting of a
    # first message "PARAR" then finds the opt-out. Idempotent, so Z-API's retries are safe.
    await feedback.after_inbound(hub.store, hub.settings, inbound, state.get("request_id"))
    try:
        accepted = await hub.ingress.accept_with_leads(
            emits=[("whatsapp.inbound", SOURCE), ("lead.created", "whatsapp")],
            match=LeadMatch(phone=inbound.get("phone"), raw_ids=raw_ids),
            dedupe=(SOURCE, message_id),
            plan=lambda rows: plan_whatsapp_inbound(inbound, rows, whatsapp_lid=lid, now=now),
            client=CLIENT,
            request_id=state.get("request_id"),
        )
    except IngressError as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.details) from None
    state["event_ids"] = [str(e.event_id) for e in accepted.events]
    metrics.observe_written(accepted.events, accepted.duplicate)
    log.info(
        "whatsapp message accepted",
        extra={
            "action": "zapi_inbound",
            "request_id": state.get("request_id"),
            # Masked by the logging filter (last digits only): enough to correlate a complaint.
            "phone": inbound.get("phone") or inbound.get("phone_raw"),
            "event_ids": state["event_ids"],
            "event_types": [e.type for e in accepted.events],
            "lead_id": accepted.lead_id,
            "lead_created": accepted.created,
            "duplicate": accepted.duplicate,
        },
    )
    return JSONResponse(
        {
            "status": "duplicate" if accepted.duplicate else "accepted",
            "event_ids": state["event_ids"],
            "lead_id": accepted.lead_id,
            "lead_created": accepted.created,
            "duplicate": accepted.duplicate,
        }
    )


async def post_whatsapp(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    request.scope["state"]["client"] = CLIENT
    await hub.limiter.for_address(request, "whatsapp", hub.limiter.whatsapp_quota())
    check_token(request)
    require_json(request)
    raw = await read_body(request, hub.settings.max_body_bytes)
    check_body_hmac(request, raw)
    body = parse_json(raw)
    result = normalize_callback(body)
    check_instance(result, body, hub.settings.zapi_instance_id)
    if result.kind == "ignored":
        return _ignored(request, result.reason or "unknown", result.callback_type)
    if result.kind in ("status", "delivery"):
        return await _status(request, result)
    assert isinstance(body, dict)  # normalize_callback only finds messages in objects
    return await _inbound(request, result, body)
