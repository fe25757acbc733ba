"""Payload models for the event catalog (DESIGN.md section 4) and their validation.

Each event type has one pydantic model listing the fields the contract requires; unknown fields
are kept (``extra="allow"``) because partner systems add fields before we model them and the
destinations may want them. Validation also *normalises*: phones to E.164, e-mails to lower
case, timestamps to offset-aware ISO 8601, money to integer cents. Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticSerializationError

from carinho_outbox.phones import EmailError, PhoneError, normalize_br_phone, normalize_email

__all__ = [
    "EVENT_MODELS",
    "PayloadError",
    "json_safety_errors",
    "pydantic_error_details",
    "validate_payload",
]

MAX_CENTS = 2**63 - 1  # Postgres bigint; a larger "amount" is a bug upstream, not money
MAX_ID_LEN = 200
MAX_NAME_LEN = 200
MAX_JSON_DEPTH = 32
MAX_REPORTED_ERRORS = 50  # a 422 listing thousands of paths helps nobody

_TS_EXAMPLE = "2024-05-01T14:30:00-03:00"
_INT_STRING_RE = re.compile(r"^[+-]?[0-9]{1,19}$")  # ASCII: int() takes other scripts


class PayloadError(Exception):
    """A payload failed validation. ``details`` is the list that goes into a 422's ``details``.

    Each entry is ``{"path": "payload.phone", "message": "...", "type": "..."}``.
    """

    def __init__(self, details: list[dict[str, str]]) -> None:
        self.details = details
        summary = "; ".join(f"{d['path']}: {d['message']}" for d in details[:5])
        super().__init__(summary or "invalid payload")


# --------------------------------------------------------------------------------------------
# Field types. Each BeforeValidator gets the raw JSON value, so it must cope with any type and
# raise only PydanticCustomError: anything else would escape as a 500.
# --------------------------------------------------------------------------------------------


def _is_blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_aware_datetime(value: object) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise PydanticCustomError(
                "datetime_type", f"timestamp is empty; expected ISO 8601, e.g. {_TS_EXAMPLE}"
            )
        try:
            parsed = datetime.fromisoformat(text) if len(text) <= 64 else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise PydanticCustomError(
                "datetime_format",
                f"not an ISO 8601 timestamp; expected e.g. {_TS_EXAMPLE}",
            )
    else:
        # Unix epochs are refused on purpose: seconds or milliseconds is a guess we'd get wrong.
        raise PydanticCustomError(
            "datetime_type", f"expected an ISO 8601 timestamp string, e.g. {_TS_EXAMPLE}"
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        # A naive time from a Brazilian system is usually local time (-03:00) but sometimes
        # UTC; guessing would shift appointments by three hours.
        raise PydanticCustomError(
            "datetime_naive",
            f"timestamp has no UTC offset; add one, e.g. {_TS_EXAMPLE} or 2024-05-01T17:30:00Z",
        )
    return parsed


def _parse_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            try:
                return date.fromisoformat(text)
            except ValueError:
                pass
        else:
            # Partners often send a full timestamp for a due date; its own calendar day is meant.
            try:
                parsed = datetime.fromisoformat(text) if 10 < len(text) <= 64 else None
            except ValueError:
                parsed = None
            if parsed is not None:
                return parsed.date()
    raise PydanticCustomError("date_format", "expected a date like 2024-05-31")


def _parse_cents(value: object) -> int:
    hint = "send integer cents, e.g. 1500 for R$ 15,00"
    if isinstance(value, bool):
        raise PydanticCustomError("money_type", f"amount must be a number, not true/false; {hint}")
    if isinstance(value, int):
        cents = value
    elif isinstance(value, float | Decimal):
        if not math.isfinite(value) or value != int(value):
            raise PydanticCustomError(
                "money_fraction", f"amount must be a whole number of cents; {hint}"
            )
        cents = int(value)
    elif isinstance(value, str):
        text = value.strip()
        # "15.00" is refused: it is more likely reais than cents, and guessing loses 100x.
        if not _INT_STRING_RE.match(text):
            raise PydanticCustomError(
                "money_format", f"amount must be an integer number of cents; {hint}"
            )
        cents = int(text)
    else:
        raise PydanticCustomError("money_type", f"amount must be a number; {hint}")
    if cents < 0:
        raise PydanticCustomError("money_negative", "amount must not be negative")
    if cents > MAX_CENTS:
        raise PydanticCustomError("money_too_large", "amount is too large")
    return cents


def _parse_id(value: object) -> int | str:
    # Partner systems use integer keys (Laravel) or strings/UUIDs; both are kept as sent so the
    # destination gets back exactly the id it knows.
    if isinstance(value, bool):
        raise PydanticCustomError("id_type", "id must be a string or an integer, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise PydanticCustomError("id_empty", "id must not be empty")
        if len(text) > MAX_ID_LEN:
            raise PydanticCustomError("id_too_long", f"id is longer than {MAX_ID_LEN} characters")
        return text
    raise PydanticCustomError("id_type", "id must be a string or an integer")


def _parse_optional_id(value: object) -> int | str | None:
    return None if _is_blank(value) else _parse_id(value)


def _parse_required_text(value: object) -> object:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise PydanticCustomError("string_empty", "must not be empty")
        return text
    return value  # not a string: let pydantic say so in its usual words


def _parse_name(value: object) -> object:
    text = _parse_required_text(value)
    if isinstance(text, str) and len(text) > MAX_NAME_LEN:
        raise PydanticCustomError("string_too_long", f"must be at most {MAX_NAME_LEN} characters")
    return text


def _parse_optional_text(value: object) -> object:
    # Web forms send "" for fields left blank; that means "not given", not "given as empty".
    if isinstance(value, str):
        return value.strip() or None
    return value


def _parse_phone(value: object) -> str | None:
    if _is_blank(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # some systems store phones as numbers
    if not isinstance(value, str):
        raise PydanticCustomError("phone_type", "phone must be a string")
    try:
        return normalize_br_phone(value)
    except PhoneError as exc:
        raise PydanticCustomError(
            "phone_invalid", "invalid phone number: {reason}", {"reason": str(exc)}
        ) from None


def _parse_email(value: object) -> str | None:
    if _is_blank(value):
        return None
    if not isinstance(value, str):
        raise PydanticCustomError("email_type", "e-mail must be a string")
    try:
        return normalize_email(value)
    except EmailError as exc:
        raise PydanticCustomError(
            "email_invalid", "invalid e-mail address: {reason}", {"reason": str(exc)}
        ) from None


def _parse_rating(value: object) -> int:
    message = "rating must be an integer from 1 to 5"
    rating: int | None = None
    if isinstance(value, bool):
        rating = None
    elif isinstance(value, int):
        rating = value
    elif isinstance(value, float) and value.is_integer():
        rating = int(value)
    elif isinstance(value, str) and value.strip() in {"1", "2", "3", "4", "5"}:
        rating = int(value.strip())
    if rating is None or not 1 <= rating <= 5:
        raise PydanticCustomError("rating_range", message)
    return rating


def _parse_period(value: object) -> str | dict[str, str]:
    # The contract names `period` without a format: accept a label ("2024-05",
    # "2024-05-01/2024-05-15") or {"start": date, "end": date}, checking the latter's order.
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict) and set(value) >= {"start", "end"}:
        try:
            start, end = _parse_date(value["start"]), _parse_date(value["end"])
        except PydanticCustomError:
            start = end = None
        if start is not None and end is not None:
            if end < start:
                raise PydanticCustomError("period_order", "period end is before its start")
            extra = {k: v for k, v in value.items() if k not in {"start", "end"}}
            return {**extra, "start": start.isoformat(), "end": end.isoformat()}
    raise PydanticCustomError(
        "period_format",
        'period must be a non-empty string such as "2024-05" or '
        '{"start": "2024-05-01", "end": "2024-05-15"}',
    )


def _parse_changes(value: object) -> object:
    if not isinstance(value, dict):
        raise PydanticCustomError("changes_type", "changes must be an object of changed fields")
    if not value:
        raise PydanticCustomError("changes_empty", "changes must name at least one field")
    return value


# Serialised with isoformat() ("+00:00", never pydantic's "Z") so the output is identical to
# what datetime.isoformat() produces elsewhere in the hub and validation is idempotent.
AwareDatetime = Annotated[
    datetime,
    BeforeValidator(_parse_aware_datetime),
    PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
]
CalendarDate = Annotated[date, BeforeValidator(_parse_date)]
Cents = Annotated[int, BeforeValidator(_parse_cents)]
EntityId = Annotated[int | str, BeforeValidator(_parse_id)]
OptionalId = Annotated[int | str | None, BeforeValidator(_parse_optional_id)]
RequiredText = Annotated[str, BeforeValidator(_parse_required_text)]
OptionalText = Annotated[str | None, BeforeValidator(_parse_optional_text)]
PersonName = Annotated[str, BeforeValidator(_parse_name)]
Phone = Annotated[str | None, BeforeValidator(_parse_phone)]
Email = Annotated[str | None, BeforeValidator(_parse_email)]
Rating = Annotated[int, BeforeValidator(_parse_rating)]
Period = Annotated[str | dict[str, Any], BeforeValidator(_parse_period)]


def cross_field_error(error_type: str, message: str, field: str) -> PydanticCustomError:
    """A cross-field error that :func:`pydantic_error_details` reports under ``field``.

    Model validators have no field location of their own; naming the first field of the rule
    lets a form highlight where to type.
    """
    return PydanticCustomError(error_type, message, {"field": field})


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


def _require_contact(model: Any, message: str = "either phone or email is required") -> None:
    if model.phone is None and model.email is None:
        raise cross_field_error("missing_contact", message, "phone")


class Changes(_Payload):
    """``changes`` of the *.updated events: any fields, with contact fields normalised."""

    phone: Phone = None
    email: Email = None


ChangesField = Annotated[Changes, BeforeValidator(_parse_changes)]


class LeadCreated(_Payload):
    name: PersonName
    phone: Phone = None
    email: Email = None
    message: OptionalText = None
    page_url: OptionalText = None
    consent: bool | None = None
    utm_source: OptionalText = None
    utm_medium: OptionalText = None
    utm_campaign: OptionalText = None
    utm_term: OptionalText = None
    utm_content: OptionalText = None
    gclid: OptionalText = None
    fbclid: OptionalText = None

    @model_validator(mode="after")
    def _contact(self) -> LeadCreated:
        _require_contact(self)
        return self


class LeadUpdated(_Payload):
    lead_id: OptionalId = None
    phone: Phone = None
    email: Email = None
    changes: ChangesField

    @model_validator(mode="after")
    def _identity(self) -> LeadUpdated:
        if self.lead_id is None and self.phone is None and self.email is None:
            raise cross_field_error(
                "missing_identity", "lead_id, phone or email is required", "lead_id"
            )
        return self


class ClientRegistered(_Payload):
    client_id: EntityId
    name: PersonName
    email: Email = None
    phone: Phone = None

    @model_validator(mode="after")
    def _contact(self) -> ClientRegistered:
        _require_contact(self, "either email or phone is required")
        return self


class ClientUpdated(_Payload):
    client_id: EntityId
    changes: ChangesField


class ServiceScheduled(_Payload):
    service_id: EntityId
    client_id: EntityId
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    caregiver_id: OptionalId = None

    @model_validator(mode="after")
    def _order(self) -> ServiceScheduled:
        if self.ends_at <= self.starts_at:
            raise cross_field_error("time_order", "ends_at must be after starts_at", "ends_at")
        return self


class ServiceStarted(_Payload):
    service_id: EntityId
    started_at: AwareDatetime


class ServiceCompleted(_Payload):
    service_id: EntityId
    client_id: EntityId
    caregiver_id: EntityId
    completed_at: AwareDatetime


class ServiceCancelled(_Payload):
    service_id: EntityId
    cancelled_at: AwareDatetime
    reason: OptionalText = None


class PaymentReceived(_Payload):
    payment_id: EntityId
    invoice_id: EntityId
    client_id: EntityId
    amount_cents: Cents
    paid_at: AwareDatetime


class PaymentFailed(_Payload):
    payment_id: EntityId
    invoice_id: EntityId
    client_id: EntityId
    reason: RequiredText


class InvoiceCreated(_Payload):
    invoice_id: EntityId
    client_id: EntityId
    amount_cents: Cents
    due_date: CalendarDate


class PayoutProcessed(_Payload):
    payout_id: EntityId
    caregiver_id: EntityId
    amount_cents: Cents
    period: Period


class InboundMedia(_Payload):
    """Descriptor of a non-text WhatsApp message; see zapi_inbound for the keys per kind."""

    kind: RequiredText


class WhatsappInbound(_Payload):
    # `phone` may be null when WhatsApp only disclosed an @lid privacy id; `phone_raw` then
    # carries that id so the message is still recorded and attributable later.
    phone: Phone = None
    phone_raw: OptionalText = None
    message_id: RequiredText
    text: str | None = None
    button_id: OptionalText = None
    button_text: OptionalText = None
    list_id: OptionalText = None
    media: InboundMedia | None = None
    timestamp: AwareDatetime | None = None
    sender_name: str | None = None
    instance_id: str | None = None
    ad: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _sender_and_content(self) -> WhatsappInbound:
        if self.phone is None and self.phone_raw is None:
            raise cross_field_error("missing_sender", "phone (or phone_raw) is required", "phone")
        has_text = self.text is not None and self.text.strip() != ""
        if not (has_text or self.button_id or self.list_id or self.media is not None):
            raise cross_field_error(
                "missing_content", "one of text, button_id, list_id or media is required", "text"
            )
        return self


class FeedbackReceived(_Payload):
    service_id: EntityId
    rating: Rating
    comment: OptionalText = None
    channel: OptionalText = None


EVENT_MODELS: dict[str, type[BaseModel]] = {
    "lead.created": LeadCreated,
    "lead.updated": LeadUpdated,
    "client.registered": ClientRegistered,
    "client.updated": ClientUpdated,
    "service.scheduled": ServiceScheduled,
    "service.started": ServiceStarted,
    "service.completed": ServiceCompleted,
    "service.cancelled": ServiceCancelled,
    "payment.received": PaymentReceived,
    "payment.failed": PaymentFailed,
    "invoice.created": InvoiceCreated,
    "payout.processed": PayoutProcessed,
    "whatsapp.inbound": WhatsappInbound,
    "feedback.received": FeedbackReceived,
}


def _join_path(prefix: str, parts: list[str]) -> str:
    return ".".join(p for p in [prefix, *parts] if p != "")


def pydantic_error_details(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    """Turn a pydantic ValidationError into ``[{"path", "message", "type"}]``.

    Paths are dotted and start with ``prefix`` (``"payload"`` for /events; ``""`` gives bare
    field names, e.g. for the site form). The rejected input is never echoed: it may be PII.
    """
    details: list[dict[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False)[:MAX_REPORTED_ERRORS]:
        parts = [str(p) for p in err.get("loc", ())]
        ctx = err.get("ctx") or {}
        if isinstance(ctx.get("field"), str):
            parts.append(ctx["field"])
        message = str(err.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        details.append(
            {"path": _join_path(prefix, parts), "message": message, "type": str(err["type"])}
        )
    return details


_STRICT_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def _plainly_safe(obj: object) -> bool:
    """True only when the walk below would find nothing, decided at C speed (the walk costs
    ~40 µs a payload, a hot spot of batch ingest): a strict dump (no NaN, valid UTF-8) that
    reads back equal (so every key was text and every value JSON: json.dumps would quietly turn
    an int key into text, a tuple into a list), holds no NUL, and has too few containers to
    nest past MAX_JSON_DEPTH. Anything else takes the walk, which says where the problem is."""
    try:
        text = _STRICT_JSON.encode(obj)
        text.encode("utf-8")
        if json.loads(text) != obj:
            return False
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return "\\u0000" not in text and text.count("{") + text.count("[") <= MAX_JSON_DEPTH


def json_safety_errors(obj: object, prefix: str = "payload") -> list[dict[str, str]]:
    """Find values Postgres ``jsonb`` would refuse, so bad input is a 422 and never a 500.

    Python's json module accepts NaN/Infinity, ``\\u0000`` and unpaired surrogates; jsonb
    rejects all of them at INSERT time, after the request was already accepted.
    """
    if _plainly_safe(obj):
        return []
    errors: list[dict[str, str]] = []

    def add(path: list[str], message: str, kind: str) -> None:
        errors.append({"path": _join_path(prefix, path), "message": message, "type": kind})

    def check_text(path: list[str], text: str, what: str) -> None:
        if "\x00" in text:
            add(path, f"{what} must not contain NUL (\\u0000) characters", "json_nul")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            add(path, f"{what} contains invalid Unicode (an unpaired surrogate)", "json_unicode")

    # Iterative, so a hostile 100k-level nesting cannot raise RecursionError. Each entry says
    # whether its last path element is an object key still to be checked, so that errors are
    # reported in document order.
    stack: list[tuple[object, list[str], bool]] = [(obj, [], False)]
    while stack and len(errors) < MAX_REPORTED_ERRORS:
        value, path, key_unchecked = stack.pop()
        if key_unchecked:
            check_text(path, path[-1], "key")
        if len(path) > MAX_JSON_DEPTH:
            add(path, f"nested more than {MAX_JSON_DEPTH} levels deep", "json_depth")
            continue
        if value is None or isinstance(value, bool | int):
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                add(path, "number must be finite (NaN and Infinity are not JSON)", "json_number")
        elif isinstance(value, str):
            check_text(path, value, "text")
        elif isinstance(value, dict):
            children: list[tuple[object, list[str], bool]] = []
            for key, item in value.items():
                if not isinstance(key, str):
                    add(path, "object keys must be strings", "json_key")
                    continue
                children.append((item, [*path, key], True))
            stack.extend(reversed(children))  # reversed: popped in document order
        elif isinstance(value, list):
            stack.extend((value[i], [*path, str(i)], False) for i in reversed(range(len(value))))
        else:
            add(path, f"a {type(value).__name__} is not a JSON value", "json_type")
    return errors


def validate_payload(
    event_type: str, payload: object, *, jsonb_safe: bool = False
) -> dict[str, Any]:
    """Validate and normalise ``payload`` for ``event_type``; return it as a JSON-ready dict.

    Only fields that were sent appear in the result (plus every unknown field, unchanged), so a
    destination sees what the source said, normalised. Raises PayloadError, nothing else.
    ``jsonb_safe``: the caller parsed the payload from JSON text already known to hold nothing
    jsonb refuses (web/body.py jsonb_safe_text), so json_safety_errors is skipped.
    """
    model = EVENT_MODELS.get(event_type) if isinstance(event_type, str) else None
    if model is None:
        known = ", ".join(sorted(EVENT_MODELS))
        raise PayloadError(
            [
                {
                    "path": "type",
                    "message": f"unknown event type; expected one of: {known}",
                    "type": "unknown_event_type",
                }
            ]
        )
    if not isinstance(payload, dict):
        raise PayloadError(
            [{"path": "payload", "message": "payload must be a JSON object", "type": "dict_type"}]
        )
    unsafe = [] if jsonb_safe else json_safety_errors(payload, "payload")
    if unsafe:
        raise PayloadError(unsafe)
    try:
        instance = model.model_validate(payload)
    except ValidationError as exc:
        raise PayloadError(pydantic_error_details(exc, "payload")) from None
    try:
        return instance.model_dump(mode="json", exclude_unset=True)
    except (PydanticSerializationError, ValueError) as exc:
        raise PayloadError(
            [{"path": "payload", "message": f"cannot be stored as JSON: {exc}", "type": "json"}]
        ) from None
