"""The feedback loop: a client's rating of a service, from the e-mail link or a WhatsApp reply,
becomes one `feedback.received` event (routed to CRM and Cuidadores); "PARAR"/"SAIR" on
WhatsApp records an opt-out.

- ``read_reply`` (pure) says what an inbound WhatsApp message means: a rating from a rating
  button (``rating_4``), a list row, or a plain "1".."5" (zapi_inbound.extract_rating), and/or
  an opt-out (zapi_inbound.is_opt_out).
- ``after_inbound`` applies it: the opt-out row, and the rating when this phone has a pending
  feedback request (one the WhatsApp channel sent within FEEDBACK_TOKEN_TTL_S, unanswered).
  The WhatsApp webhook calls it just before it stores the message (so the greeting of a
  first message "PARAR" already finds the opt-out); everything it writes is idempotent, so
  Z-API's retry of a callback whose first answer failed redoes it safely.
- ``answer`` is the single-use step both channels share: the first answer for a service wins
  and is written in the same transaction as its event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from .ingress import ordering_key
from .messages import rating_from_id
from .payloads import validate_payload
from .settings import Settings
from .store import Store
from .zapi_inbound import extract_rating, is_opt_out

log = logging.getLogger(__name__)

MAX_COMMENT_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Reply:
    rating: int | None = None
    opt_out: bool = False


@dataclass(frozen=True, slots=True)
class Answered:
    event_id: UUID
    destinations: list[str]


def read_reply(inbound: Mapping[str, Any]) -> Reply:
    for key in ("button_id", "list_id"):
        rating = rating_from_id(inbound.get(key))
        if rating is not None:
            return Reply(rating=rating)
    text = inbound.get("text")
    if not isinstance(text, str):
        return Reply()
    if is_opt_out(text):
        return Reply(opt_out=True)
    return Reply(rating=extract_rating(text))


async def answer(
    store: Store,
    *,
    service_id: str,
    rating: int,
    comment: str | None,
    channel: str,
    source: str,
    request_id: str | None = None,
    client: str | None = None,
) -> Answered | None:
    """Record the answer and write feedback.received; None when already answered."""
    catalog = await store.event_catalog()
    paths = catalog.get("feedback.received", ([], []))[1]

    def build(request: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        payload: dict[str, Any] = {"service_id": service_id, "rating": rating, "channel": channel}
        if comment:
            payload["comment"] = comment[:MAX_COMMENT_CHARS]
        for key in ("client_id", "caregiver_id"):
            if request.get(key):
                payload[key] = request[key]
        # The catalog contract holds for events the hub composes itself; a failure here is a
        # bug and rolls the answer back with it.
        clean = validate_payload("feedback.received", payload)
        return clean, ordering_key(paths, clean)

    written = await store.answer_feedback(
        service_id=service_id,
        rating=rating,
        comment=comment[:MAX_COMMENT_CHARS] if comment else None,
        channel=channel,
        source=source,
        idempotency_key=f"feedback:{service_id}",
        build=build,
        request_id=request_id,
        client=client,
    )
    if written is None:
        return None
    log.info(
        "feedback received",
        extra={
            "action": "feedback_received",
            "service_id": service_id,
            "rating": rating,
            "channel": channel,
            "event_id": str(written[0]),
        },
    )
    return Answered(*written)


async def after_inbound(
    store: Store, settings: Settings, inbound: Mapping[str, Any], request_id: str | None = None
) -> dict[str, Any]:
    """What a stored WhatsApp message implies for the feedback loop and opt-outs."""
    phone = inbound.get("phone")
    reply = read_reply(inbound)
    done: dict[str, Any] = {}
    if not isinstance(phone, str) or not phone or (reply.rating is None and not reply.opt_out):
        return done
    if reply.opt_out:
        first = await store.opt_out_record(
            address=phone,
            channel="whatsapp",
            reason=str(inbound.get("text", ""))[:64],
            message_id=str(inbound.get("message_id")),
        )
        done["opt_out"] = True
        log.info(
            "opt-out recorded",
            extra={"action": "opt_out", "phone": phone, "first": first, "request_id": request_id},
        )
    if reply.rating is not None:
        pending = await store.feedback_pending_by_phone(
            phone=phone, within_s=float(settings.feedback_token_ttl_s)
        )
        if pending is not None:
            answered = await answer(
                store,
                service_id=pending["service_id"],
                rating=reply.rating,
                comment=None,
                channel="whatsapp",
                source="whatsapp",
                request_id=request_id,
                client="zapi-webhook",
            )
            done["feedback_event_id"] = str(answered.event_id) if answered else None
    return done
