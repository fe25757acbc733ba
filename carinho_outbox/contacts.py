"""Who an automated message goes to, and whether it may be sent.

``StoreAudience`` is the small lookup object the channel adapters get: they never touch the
database themselves, they ask it for a ``Recipient`` (with the reason it is blocked, if it is)
and tell it when a feedback request goes out. Lead and client events carry the person's
phone and e-mail; service events carry only a client_id, resolved through the ``contacts``
table (kept by a trigger on client.registered / client.updated, sql/0009).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from .phones import EmailError, PhoneError, normalize_br_phone, normalize_email
from .records import SendResult
from .store import Store

# What every channel adapter records for a message it decided not to send. The delivery is
# finished ('delivered', nothing to retry); the attempt row and the delivery's last_response
# start with this, so skips are countable:
#   select count(*) from webhook_deliveries where response_body like 'skipped:%'
SKIPPED_PREFIX = "skipped: "


class RecipientUnknown(LookupError):
    """The event names a client the hub has no contact for."""


@dataclass(frozen=True, slots=True)
class Recipient:
    name: str | None
    phone: str | None  # E.164
    email: str | None
    client_id: str | None = None
    blocked: str | None = None  # why nothing may be sent ("opted out", "no consent")


class Audience(Protocol):
    async def recipient(self, event_type: str, data: dict[str, Any]) -> Recipient: ...

    async def feedback_requested(
        self, *, data: dict[str, Any], recipient: Recipient, channel: str
    ) -> None: ...


def skipped(reason: str, channel: str, started: float) -> SendResult:
    text = SKIPPED_PREFIX + reason
    return SendResult(
        ok=True,
        response=text,
        request_summary=f"{channel}: {text}",
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _phone(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return normalize_br_phone(value)
    except PhoneError:
        return None


def _email(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return normalize_email(value)
    except EmailError:
        return None


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _consent(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


class StoreAudience:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def recipient(self, event_type: str, data: dict[str, Any]) -> Recipient:
        if event_type.startswith("service."):
            client_id = str(data.get("client_id") or "")
            row = await self.store.contact_get(client_id=client_id) if client_id else None
            if row is None:
                raise RecipientUnknown(
                    f"no contact for client_id {client_id!r}: no client.registered or "
                    "client.updated seen for it"
                )
            person = Recipient(
                name=row["name"], phone=row["phone"], email=row["email"], client_id=client_id
            )
            consent = row["consent"]
        else:
            person = Recipient(
                name=_text(data.get("name")),
                phone=_phone(data.get("phone")),
                email=_email(data.get("email")),
                client_id=_text(str(data["client_id"])) if data.get("client_id") else None,
            )
            consent = _consent(data.get("consent"))
            if consent is None and person.client_id:
                row = await self.store.contact_get(client_id=person.client_id)
                consent = row["consent"] if row else None
        flags = await self.store.contact_flags(
            phone=person.phone, email=person.email, check_leads=event_type.startswith("lead.")
        )
        blocked = None
        if flags["opted_out"]:
            blocked = "opted out"
        elif consent is False or flags["lead_refused"]:
            blocked = "no consent"
        return Recipient(person.name, person.phone, person.email, person.client_id, blocked)

    async def feedback_requested(
        self, *, data: dict[str, Any], recipient: Recipient, channel: str
    ) -> None:
        await self.store.feedback_request_record(
            service_id=str(data["service_id"]),
            client_id=recipient.client_id,
            caregiver_id=str(data["caregiver_id"]) if data.get("caregiver_id") else None,
            phone=recipient.phone if channel == "whatsapp" else None,
            email=recipient.email if channel == "email" else None,
            channel=channel,
        )
