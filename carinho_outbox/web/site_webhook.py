"""`POST /webhooks/site/lead`: the website's lead form, signed with Standard Webhooks.

Order of checks, cheapest refusal first: the per-address rate limit, the body size, the
signature over the raw bytes (so nothing unauthenticated is ever parsed), the media type and
the parse, the form, then one transaction that de-duplicates the lead and writes
`lead.created` (new phone and e-mail) or `lead.updated` (known ones). The `webhook-id` is the
idempotency key: the site's retries of one submission answer 200 with the first event.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import metrics, signing
from ..ingress import IngressError
from ..leads import LeadMatch, plan_site_lead
from ..payloads import json_safety_errors, pydantic_error_details
from ..site_lead import SiteLeadForm
from .body import parse_json, read_body
from .errors import ApiError

log = logging.getLogger(__name__)

SOURCE = "site"
CLIENT = "site-webhook"
MAX_WEBHOOK_ID_LEN = 200
MAX_FORM_FIELDS = 100
_FORM = "application/x-www-form-urlencoded"


def parse_form_body(request: Request, raw: bytes) -> Any:
    """JSON, or the urlencoded body a plain HTML form posts (last value of a repeated field)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return parse_json(raw)
    if media == _FORM:
        try:
            pairs = parse_qsl(
                raw.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=False,
                max_num_fields=MAX_FORM_FIELDS,
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, "malformed_form", f"body is not a valid form: {exc}") from None
        return dict(pairs)
    raise ApiError(415, "unsupported_media_type", f"send the form as application/json or {_FORM}")


def verify_signature(request: Request, secret: str, raw: bytes) -> str:
    """Check the Standard Webhooks headers; return the webhook-id (the idempotency key)."""
    msg_id = request.headers.get("webhook-id")
    try:
        signing.verify(
            secret,
            msg_id,
            request.headers.get("webhook-timestamp"),
            request.headers.get("webhook-signature"),
            raw,
        )
    except signing.SignatureError as exc:
        raise ApiError(401, "invalid_signature", str(exc)) from None
    assert msg_id is not None  # verify() refuses a missing id
    if len(msg_id) > MAX_WEBHOOK_ID_LEN or not msg_id.isprintable():
        raise ApiError(
            400, "bad_request", f"webhook-id must be at most {MAX_WEBHOOK_ID_LEN} printable chars"
        )
    return msg_id


def validate_form(doc: Any) -> dict[str, Any]:
    """The form as a `lead.created` payload (phone E.164, e-mail lower case) or a 422."""
    if not isinstance(doc, dict):
        raise ApiError(
            422,
            "validation_error",
            "the form must be a JSON object",
            [{"path": "", "message": "expected an object of form fields", "type": "dict_type"}],
        )
    unsafe = json_safety_errors(doc, "")
    if unsafe:
        raise ApiError(422, "validation_error", "the form cannot be stored", unsafe)
    try:
        form = SiteLeadForm.model_validate(doc)
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "invalid lead form", pydantic_error_details(exc, "")
        ) from None
    return form.to_lead_payload()


async def post_site_lead(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    state = request.scope["state"]
    state["client"] = CLIENT
    await hub.limiter.for_address(request, "site", hub.limiter.site_quota())
    secret = hub.settings.site_webhook_secret
    if secret is None or not secret.get_secret_value():
        raise ApiError(503, "not_configured", "the site webhook is not configured")
    raw = await read_body(request, hub.settings.max_body_bytes)
    webhook_id = verify_signature(request, secret.get_secret_value(), raw)
    form = validate_form(parse_form_body(request, raw))
    now = datetime.now(UTC)
    try:
        result = await hub.ingress.accept_with_leads(
            emits=[("lead.created", SOURCE), ("lead.updated", SOURCE)],
            match=LeadMatch(phone=form.get("phone"), email=form.get("email")),
            dedupe=(SOURCE, webhook_id),
            plan=lambda rows: plan_site_lead(form, rows, idempotency_key=webhook_id, now=now),
            client=CLIENT,
            request_id=state.get("request_id"),
        )
    except IngressError as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.details) from None
    event = result.events[0]
    state["event_ids"] = [str(e.event_id) for e in result.events]
    metrics.observe_written(result.events, result.duplicate)
    log.info(
        "site lead accepted",
        extra={
            "action": "site_lead",
            "request_id": state.get("request_id"),
            # Masked by the logging filter (last digits, first letter): enough to correlate.
            "phone": form.get("phone"),
            "email": form.get("email"),
            "event_type": event.type,
            "event_ids": state["event_ids"],
            "lead_id": result.lead_id,
            "duplicate": result.duplicate,
        },
    )
    return JSONResponse(
        {
            "event_id": str(event.event_id),
            "event_type": event.type,
            "lead_id": result.lead_id,
            "deliveries": event.destinations,
            "duplicate": result.duplicate,
        },
        status_code=200 if result.duplicate else 202,
    )
