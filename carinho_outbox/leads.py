"""Lead de-duplication and attribution: what a site submission or a WhatsApp message means for
the `leads` table and which events it becomes.

Pure: the store runs these planners inside its transaction, after it has locked the contact and
read the matching rows, so every decision here sees the rows as they are and writes nothing of
its own. A planner returns a LeadPlan (the row to insert or update and the events to write);
the store writes exactly that, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from .payloads import validate_payload

__all__ = [
    "LeadIngest",
    "LeadMatch",
    "LeadPlan",
    "LeadRow",
    "PlannedEvent",
    "WrittenEvent",
    "followup_events",
    "lock_keys",
    "pick_lead",
    "plan_site_lead",
    "plan_whatsapp_inbound",
    "site_touch",
    "whatsapp_touch",
]

# Form fields that describe where a submission came from rather than who sent it.
TOUCH_FIELDS = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "fbclid",
    "page_url",
)
# Fields of the person; a difference from the stored lead is a change worth reporting.
PERSON_FIELDS = ("name", "phone", "email", "consent")
_KNOWN_FORM_FIELDS = frozenset({*TOUCH_FIELDS, *PERSON_FIELDS, "message"})
WHATSAPP_LEAD_NAME = "Contato WhatsApp"  # lead.created needs a name; WhatsApp may not give one


@dataclass(frozen=True, slots=True)
class LeadMatch:
    """What to look leads up by: any of these equal to a stored value is a match."""

    phone: str | None = None
    email: str | None = None
    raw_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LeadRow:
    """The column values of one `leads` row as the plan wants them after the write."""

    lead_id: UUID
    name: str | None
    phone: str | None
    phone_raw: str | None
    whatsapp_lid: str | None
    email: str | None
    consent: bool | None
    source: str
    first_touch: dict[str, Any]
    last_touch: dict[str, Any]
    touches: int


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    type: str
    source: str
    payload: dict[str, Any]
    idempotency_key: str
    ordering_key: str | None = None
    occurred_at: datetime | None = None  # None: when the hub received it


@dataclass(frozen=True, slots=True)
class LeadPlan:
    events: tuple[PlannedEvent, ...]
    insert: LeadRow | None = None
    update: tuple[int, LeadRow] | None = None  # (leads.id, new values)
    lead_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class WrittenEvent:
    event_id: UUID
    type: str
    destinations: list[str]
    source: str = ""


@dataclass(frozen=True, slots=True)
class LeadIngest:
    """What the store wrote (or, for a repeated idempotency key, what it wrote the first time)."""

    events: list[WrittenEvent]
    duplicate: bool
    lead_id: str | None = None
    created: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


Planner = Callable[[list[dict[str, Any]]], LeadPlan]


def lock_keys(match: LeadMatch, dedupe: tuple[str, str]) -> list[str]:
    """Advisory-lock names that serialise every writer that could touch the same lead.

    Two submissions that could end in the same row (or collide on a unique index) always share
    one of these values, so they take turns; unrelated leads never wait for each other.
    """
    keys = [f"idem:{dedupe[0]}:{dedupe[1]}"]
    if match.phone:
        keys.append(f"phone:{match.phone}")
    if match.email:
        keys.append(f"email:{match.email}")
    keys.extend(f"raw:{raw}" for raw in match.raw_ids)
    return sorted(set(keys))


def _rank(row: Mapping[str, Any], match: LeadMatch) -> int:
    if match.phone is not None and row.get("phone") == match.phone:
        return 0
    if match.email is not None and row.get("email") == match.email:
        return 1
    return 2  # matched on a raw WhatsApp id


def pick_lead(
    rows: Sequence[Mapping[str, Any]], match: LeadMatch
) -> tuple[Mapping[str, Any] | None, list[Mapping[str, Any]]]:
    """The lead a submission belongs to, and the other leads it also matched.

    The phone is the surest identity (it is what WhatsApp and the attendants use), then the
    e-mail, then a raw WhatsApp id; the oldest lead wins a tie.
    """
    if not rows:
        return None, []
    ordered = sorted(rows, key=lambda r: (_rank(r, match), r["id"]))
    return ordered[0], list(ordered[1:])


def site_touch(form: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    touch: dict[str, Any] = {"at": at.isoformat(), "channel": "site"}
    touch.update({k: form[k] for k in TOUCH_FIELDS if form.get(k) is not None})
    return touch


def whatsapp_touch(inbound: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    touch: dict[str, Any] = {"at": at.isoformat(), "channel": "whatsapp"}
    if inbound.get("ad"):
        touch["ad"] = inbound["ad"]
    return touch


def _row_values(row: Mapping[str, Any]) -> LeadRow:
    return LeadRow(
        lead_id=row["lead_id"],
        name=row["name"],
        phone=row["phone"],
        phone_raw=row["phone_raw"],
        whatsapp_lid=row["whatsapp_lid"],
        email=row["email"],
        consent=row["consent"],
        source=row["source"],
        first_touch=row["first_touch"],
        last_touch=row["last_touch"],
        touches=row["touches"],
    )


def _free(value: str | None, column: str, others: Iterable[Mapping[str, Any]]) -> bool:
    """Whether `value` may be stored on this lead: another lead holding it keeps it."""
    return value is not None and all(o.get(column) != value for o in others)


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _checked(event: PlannedEvent) -> PlannedEvent:
    # The catalog contract holds for events the hub composes too; a PayloadError here is a bug
    # in a planner, and the transaction it runs in is rolled back.
    return replace(event, payload=validate_payload(event.type, event.payload))


def plan_site_lead(
    form: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    idempotency_key: str,
    now: datetime,
    new_lead_id: Callable[[], UUID] = uuid4,
) -> LeadPlan:
    """A validated site form (a `lead.created` payload) → lead.created for a new person, or
    lead.updated with what changed (and the new touch) for a known phone or e-mail."""
    match = LeadMatch(phone=form.get("phone"), email=form.get("email"))
    primary, others = pick_lead(rows, match)
    touch = site_touch(form, now)
    if primary is None:
        lead_id = new_lead_id()
        row = LeadRow(
            lead_id=lead_id,
            name=form.get("name"),
            phone=form.get("phone"),
            phone_raw=None,
            whatsapp_lid=None,
            email=form.get("email"),
            consent=form.get("consent"),
            source="site",
            first_touch=touch,
            last_touch=touch,
            touches=1,
        )
        event = PlannedEvent(
            "lead.created", "site", {**form, "lead_id": str(lead_id)}, idempotency_key
        )
        return LeadPlan(events=(_checked(event),), insert=row, lead_id=lead_id)

    old = _row_values(primary)
    changes: dict[str, Any] = {}
    for name in PERSON_FIELDS:
        value = form.get(name)
        if value is not None and value != getattr(old, name):
            changes[name] = value
    if form.get("message") is not None:
        changes["message"] = form["message"]
    changes.update({k: v for k, v in form.items() if k not in _KNOWN_FORM_FIELDS})
    changes["last_touch"] = touch
    phone = form.get("phone")
    email = form.get("email")
    new = replace(
        old,
        name=form.get("name") or old.name,
        # Contacts are identity: a known one is never replaced, only an empty one filled, so
        # the lead keeps matching what it matched before. A different phone or e-mail is
        # still reported in `changes` for the CRM to decide on.
        phone=old.phone or (phone if _free(phone, "phone", others) else None),
        email=old.email or (email if _free(email, "email", others) else None),
        consent=form["consent"] if form.get("consent") is not None else old.consent,
        last_touch=touch,
        touches=old.touches + 1,
    )
    payload: dict[str, Any] = {"lead_id": str(old.lead_id), "name": new.name, "changes": changes}
    if new.phone is not None:
        payload["phone"] = new.phone
    if new.email is not None:
        payload["email"] = new.email
    event = PlannedEvent("lead.updated", "site", payload, idempotency_key)
    return LeadPlan(events=(_checked(event),), update=(primary["id"], new), lead_id=old.lead_id)


def followup_events(
    inbound: Mapping[str, Any], lead: Mapping[str, Any] | None
) -> list[PlannedEvent]:
    """Events an inbound WhatsApp message implies beyond itself and a new lead.

    The seam for the feedback loop and opt-outs (issue 5): a reply "1".."5" or a rating button
    to a pending feedback request becomes `feedback.received` (zapi_inbound.extract_rating),
    and "PARAR"/"SAIR" an opt-out (zapi_inbound.is_opt_out). Both need to know which request
    is pending for this phone, which only that issue's tables can say, so nothing yet.
    Whatever this returns is written in the same transaction as the message itself.
    """
    return []


def plan_whatsapp_inbound(
    inbound: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    whatsapp_lid: str | None,
    now: datetime,
    followups: Callable[
        [Mapping[str, Any], Mapping[str, Any] | None], list[PlannedEvent]
    ] = followup_events,
    new_lead_id: Callable[[], UUID] = uuid4,
) -> LeadPlan:
    """A validated `whatsapp.inbound` payload → that event, plus `lead.created` (source
    whatsapp, with the ad attribution) when no lead has this phone or raw id yet.

    A sender known only by an "@lid" id gets no lead row and no lead.created: the catalog needs
    a phone or an e-mail, and a later message that does carry the number (with the same lid)
    can then still create the lead.
    """
    message_id = str(inbound["message_id"])
    phone = inbound.get("phone")
    raw_ids = tuple(sorted({r for r in (inbound.get("phone_raw"), whatsapp_lid) if r}))
    primary, others = pick_lead(rows, LeadMatch(phone=phone, raw_ids=raw_ids))
    touch = whatsapp_touch(inbound, now)
    sent_at = _parse_time(inbound.get("timestamp"))

    def message(lead_id: UUID | None) -> PlannedEvent:
        payload = {**inbound, "lead_id": str(lead_id)} if lead_id else dict(inbound)
        return PlannedEvent("whatsapp.inbound", "zapi", payload, message_id, occurred_at=sent_at)

    if primary is None and phone is None:
        events = [message(None), *followups(inbound, None)]
        return LeadPlan(events=tuple(_checked(e) for e in events))
    if primary is None:
        lead_id = new_lead_id()
        row = LeadRow(
            lead_id=lead_id,
            name=inbound.get("sender_name"),
            phone=phone,
            phone_raw=inbound.get("phone_raw"),
            whatsapp_lid=whatsapp_lid,
            email=None,
            consent=None,
            source="whatsapp",
            first_touch=touch,
            last_touch=touch,
            touches=1,
        )
        lead_payload: dict[str, Any] = {
            "lead_id": str(lead_id),
            "name": inbound.get("sender_name") or WHATSAPP_LEAD_NAME,
            "phone": phone,
            "phone_raw": inbound.get("phone_raw"),
            "channel": "whatsapp",
            "whatsapp_message_id": message_id,
        }
        if isinstance(inbound.get("text"), str) and inbound["text"].strip():
            lead_payload["message"] = inbound["text"]
        if inbound.get("ad"):
            lead_payload["ad"] = inbound["ad"]
        # The lead's own key: unique per source already, prefixed so that it can never meet
        # a key a partner chose for a whatsapp-sourced event sent through POST /events.
        lead_event = PlannedEvent(
            "lead.created", "whatsapp", lead_payload, f"wa:{message_id}", occurred_at=sent_at
        )
        events = [message(lead_id), lead_event, *followups(inbound, None)]
        return LeadPlan(events=tuple(_checked(e) for e in events), insert=row, lead_id=lead_id)

    old = _row_values(primary)
    new = replace(
        old,
        name=old.name or inbound.get("sender_name"),
        phone=old.phone or (phone if _free(phone, "phone", others) else None),
        phone_raw=inbound.get("phone_raw") or old.phone_raw,
        whatsapp_lid=whatsapp_lid or old.whatsapp_lid,
    )
    if inbound.get("ad"):
        # Clicking another ad is a new touch for attribution; an ordinary message is not.
        new = replace(new, last_touch=touch, touches=old.touches + 1)
    events = [message(old.lead_id), *followups(inbound, primary)]
    return LeadPlan(
        events=tuple(_checked(e) for e in events),
        update=(primary["id"], new) if new != old else None,
        lead_id=old.lead_id,
    )
