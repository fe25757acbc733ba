"""Event payload validation and normalisation (carinho_outbox.payloads)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from carinho_outbox.payloads import (
    EVENT_MODELS,
    PayloadError,
    json_safety_errors,
    pydantic_error_details,
    validate_payload,
)

TS = "2024-05-01T14:30:00-03:00"

# One valid payload per catalog type, with the exact normalised result expected.
VALID: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lead.created": (
        {
            "name": "  Maria da Silva ",
            "phone": "(11) 98765-4321",
            "email": " Maria@Example.COM ",
            "utm_source": "google",
            "utm_campaign": "cuidadoras-sp",
            "message": "Preciso de cuidadora para minha mãe",
            "page_url": "https://carinho.com.br/contato",
            "consent": True,
            "landing_variant": "b",
        },
        {
            "name": "Maria da Silva",
            "phone": "+5511987654321",
            "email": "maria@example.com",
            "utm_source": "google",
            "utm_campaign": "cuidadoras-sp",
            "message": "Preciso de cuidadora para minha mãe",
            "page_url": "https://carinho.com.br/contato",
            "consent": True,
            "landing_variant": "b",
        },
    ),
    "lead.updated": (
        {"lead_id": 42, "changes": {"status": "qualified", "phone": "554199999999"}},
        {"lead_id": 42, "changes": {"status": "qualified", "phone": "+5541999999999"}},
    ),
    "client.registered": (
        {"client_id": "c-1", "name": "João", "email": "JOAO@x.com.br"},
        {"client_id": "c-1", "name": "João", "email": "joao@x.com.br"},
    ),
    "client.updated": (
        {"client_id": 7, "changes": {"address": {"city": "Curitiba"}}},
        {"client_id": 7, "changes": {"address": {"city": "Curitiba"}}},
    ),
    "service.scheduled": (
        {
            "service_id": "s-1",
            "client_id": "c-1",
            "starts_at": "2024-05-01T08:00:00-03:00",
            "ends_at": "2024-05-01T20:00:00Z",
            "caregiver_id": 9,
        },
        {
            "service_id": "s-1",
            "client_id": "c-1",
            "starts_at": "2024-05-01T08:00:00-03:00",
            "ends_at": "2024-05-01T20:00:00+00:00",
            "caregiver_id": 9,
        },
    ),
    "service.started": (
        {"service_id": "s-1", "started_at": TS},
        {"service_id": "s-1", "started_at": TS},
    ),
    "service.completed": (
        {"service_id": "s-1", "client_id": "c-1", "caregiver_id": "g-1", "completed_at": TS},
        {"service_id": "s-1", "client_id": "c-1", "caregiver_id": "g-1", "completed_at": TS},
    ),
    "service.cancelled": (
        {"service_id": "s-1", "cancelled_at": TS, "reason": " família viajou "},
        {"service_id": "s-1", "cancelled_at": TS, "reason": "família viajou"},
    ),
    "payment.received": (
        {
            "payment_id": "p-1",
            "invoice_id": "i-1",
            "client_id": "c-1",
            "amount_cents": "150000",
            "paid_at": "2024-05-01T17:30:00.250Z",
            "method": "pix",
        },
        {
            "payment_id": "p-1",
            "invoice_id": "i-1",
            "client_id": "c-1",
            "amount_cents": 150000,
            "paid_at": "2024-05-01T17:30:00.250000+00:00",
            "method": "pix",
        },
    ),
    "payment.failed": (
        {"payment_id": "p-1", "invoice_id": "i-1", "client_id": "c-1", "reason": "card_declined"},
        {"payment_id": "p-1", "invoice_id": "i-1", "client_id": "c-1", "reason": "card_declined"},
    ),
    "invoice.created": (
        {
            "invoice_id": "i-1",
            "client_id": "c-1",
            "amount_cents": 99900.0,
            "due_date": "2024-05-31",
        },
        {"invoice_id": "i-1", "client_id": "c-1", "amount_cents": 99900, "due_date": "2024-05-31"},
    ),
    "payout.processed": (
        {"payout_id": "po-1", "caregiver_id": "g-1", "amount_cents": 320000, "period": "2024-05"},
        {"payout_id": "po-1", "caregiver_id": "g-1", "amount_cents": 320000, "period": "2024-05"},
    ),
    "whatsapp.inbound": (
        {"phone": "5544999999999", "message_id": "3EB0", "text": "Oi, quero um orçamento"},
        {"phone": "+5544999999999", "message_id": "3EB0", "text": "Oi, quero um orçamento"},
    ),
    "feedback.received": (
        {"service_id": "s-1", "rating": "5", "comment": "Ótima!", "channel": "whatsapp"},
        {"service_id": "s-1", "rating": 5, "comment": "Ótima!", "channel": "whatsapp"},
    ),
}

REQUIRED: dict[str, list[str]] = {
    "lead.created": ["name"],
    "lead.updated": ["changes"],
    "client.registered": ["client_id", "name"],
    "client.updated": ["client_id", "changes"],
    "service.scheduled": ["service_id", "client_id", "starts_at", "ends_at"],
    "service.started": ["service_id", "started_at"],
    "service.completed": ["service_id", "client_id", "caregiver_id", "completed_at"],
    "service.cancelled": ["service_id", "cancelled_at"],
    "payment.received": ["payment_id", "invoice_id", "client_id", "amount_cents", "paid_at"],
    "payment.failed": ["payment_id", "invoice_id", "client_id", "reason"],
    "invoice.created": ["invoice_id", "client_id", "amount_cents", "due_date"],
    "payout.processed": ["payout_id", "caregiver_id", "amount_cents", "period"],
    "whatsapp.inbound": ["message_id"],
    "feedback.received": ["service_id", "rating"],
}


def _errors(event_type: str, payload: object) -> list[dict[str, str]]:
    with pytest.raises(PayloadError) as info:
        validate_payload(event_type, payload)
    return info.value.details


def test_catalog_has_the_fourteen_contract_types() -> None:
    assert set(EVENT_MODELS) == set(VALID) == set(REQUIRED)
    assert len(EVENT_MODELS) == 14


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_valid_payload_is_normalised(event_type: str) -> None:
    raw, expected = VALID[event_type]
    assert validate_payload(event_type, raw) == expected


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_validation_is_idempotent(event_type: str) -> None:
    once = validate_payload(event_type, VALID[event_type][0])
    assert validate_payload(event_type, once) == once


@pytest.mark.parametrize(
    ("event_type", "field"), [(t, f) for t, fields in sorted(REQUIRED.items()) for f in fields]
)
def test_missing_required_field_is_reported_by_path(event_type: str, field: str) -> None:
    payload = dict(VALID[event_type][0])
    del payload[field]
    details = _errors(event_type, payload)
    assert {"path": f"payload.{field}", "message": "Field required", "type": "missing"} in details


def test_unknown_event_type() -> None:
    details = _errors("lead.deleted", {"name": "x"})
    assert len(details) == 1
    assert details[0]["path"] == "type"
    assert details[0]["type"] == "unknown_event_type"
    assert "lead.created" in details[0]["message"]


@pytest.mark.parametrize("payload", [[], "x", None, 3, [{"name": "a"}]])
def test_payload_must_be_an_object(payload: object) -> None:
    assert _errors("lead.created", payload) == [
        {"path": "payload", "message": "payload must be a JSON object", "type": "dict_type"}
    ]


def test_unknown_fields_are_kept_untouched() -> None:
    extra = {"nested": {"a": [1, 2.5, None, True]}, "_private": "x", "model_config": 1}
    out = validate_payload("service.started", {"service_id": 1, "started_at": TS, **extra})
    assert out == {"service_id": 1, "started_at": TS, **extra}


def test_absent_optional_fields_are_not_invented() -> None:
    out = validate_payload("lead.created", {"name": "Ana", "email": "ana@x.com"})
    assert out == {"name": "Ana", "email": "ana@x.com"}


# --- contact rules -----------------------------------------------------------------------


def test_lead_needs_phone_or_email() -> None:
    assert _errors("lead.created", {"name": "Ana", "phone": "", "email": None}) == [
        {
            "path": "payload.phone",
            "message": "either phone or email is required",
            "type": "missing_contact",
        }
    ]


def test_client_registered_needs_email_or_phone() -> None:
    details = _errors("client.registered", {"client_id": 1, "name": "Ana"})
    assert details == [
        {
            "path": "payload.phone",
            "message": "either email or phone is required",
            "type": "missing_contact",
        }
    ]


def test_lead_updated_identity_rule() -> None:
    assert _errors("lead.updated", {"changes": {"x": 1}}) == [
        {
            "path": "payload.lead_id",
            "message": "lead_id, phone or email is required",
            "type": "missing_identity",
        }
    ]
    out = validate_payload("lead.updated", {"email": "A@B.com", "changes": {"x": 1}})
    assert out == {"email": "a@b.com", "changes": {"x": 1}}


def test_changes_must_be_a_non_empty_object() -> None:
    assert _errors("client.updated", {"client_id": 1, "changes": {}})[0] == {
        "path": "payload.changes",
        "message": "changes must name at least one field",
        "type": "changes_empty",
    }
    assert _errors("client.updated", {"client_id": 1, "changes": ["a"]})[0]["type"] == (
        "changes_type"
    )


def test_phone_inside_changes_is_validated_with_its_path() -> None:
    details = _errors("client.updated", {"client_id": 1, "changes": {"phone": "(20) 9999-9999"}})
    assert details == [
        {
            "path": "payload.changes.phone",
            "message": "invalid phone number: unknown area code 20",
            "type": "phone_invalid",
        }
    ]


@pytest.mark.parametrize(
    ("phone", "reason"),
    [
        ("(20) 98765-4321", "unknown area code 20"),
        ("1234", "too few digits (4)"),
        ("+1 212 555 1234", "country code must be +55"),
    ],
)
def test_invalid_phone_says_why(phone: str, reason: str) -> None:
    details = _errors("lead.created", {"name": "Ana", "phone": phone})
    assert [(d["path"], d["type"]) for d in details] == [("payload.phone", "phone_invalid")]
    assert details[0]["message"].startswith("invalid phone number: ")
    assert reason in details[0]["message"]


def test_phone_sent_as_number_is_accepted() -> None:
    out = validate_payload("lead.created", {"name": "Ana", "phone": 5511987654321})
    assert out["phone"] == "+5511987654321"


def test_invalid_email_says_why() -> None:
    details = _errors("lead.created", {"name": "Ana", "email": "ana@localhost"})
    assert details == [
        {
            "path": "payload.email",
            "message": "invalid e-mail address: e-mail domain 'localhost' has no dot",
            "type": "email_invalid",
        }
    ]


# --- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T14:30:00-03:00", "2024-05-01T14:30:00-03:00"),
        ("2024-05-01T17:30:00Z", "2024-05-01T17:30:00+00:00"),
        ("2024-05-01 14:30:00-0300", "2024-05-01T14:30:00-03:00"),
        ("2024-05-01T14:30:00.123+05:30", "2024-05-01T14:30:00.123000+05:30"),
    ],
)
def test_timestamps_with_offset_are_accepted(value: str, expected: str) -> None:
    out = validate_payload("service.started", {"service_id": 1, "started_at": value})
    assert out["started_at"] == expected


@pytest.mark.parametrize(
    ("value", "error_type"),
    [
        ("2024-05-01T14:30:00", "datetime_naive"),
        ("2024-05-01", "datetime_naive"),
        ("01/05/2024 14:30", "datetime_format"),
        ("", "datetime_type"),
        (1714584600, "datetime_type"),
        (None, "datetime_type"),
        ({"date": "2024-05-01"}, "datetime_type"),
    ],
)
def test_bad_timestamps_are_rejected(value: object, error_type: str) -> None:
    details = _errors("service.started", {"service_id": 1, "started_at": value})
    assert [(d["path"], d["type"]) for d in details] == [("payload.started_at", error_type)]


def test_naive_timestamp_message_is_actionable() -> None:
    details = _errors("service.started", {"service_id": 1, "started_at": "2024-05-01T14:30:00"})
    assert details[0]["message"].startswith("timestamp has no UTC offset")
    assert "-03:00" in details[0]["message"]


def test_service_must_end_after_it_starts() -> None:
    payload = dict(VALID["service.scheduled"][0], ends_at="2024-05-01T07:00:00-03:00")
    assert _errors("service.scheduled", payload) == [
        {
            "path": "payload.ends_at",
            "message": "ends_at must be after starts_at",
            "type": "time_order",
        }
    ]


# --- money, ids, ratings, dates ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(1500, 1500), ("1500", 1500), (" 1500 ", 1500), (1500.0, 1500), (0, 0)]
)
def test_amount_cents_accepted(value: object, expected: int) -> None:
    payload = dict(VALID["invoice.created"][0], amount_cents=value)
    assert validate_payload("invoice.created", payload)["amount_cents"] == expected


@pytest.mark.parametrize(
    ("value", "error_type"),
    [
        (15.5, "money_fraction"),
        ("15.00", "money_format"),
        ("1.500", "money_format"),
        ("R$ 15", "money_format"),
        ("1_500", "money_format"),
        ("\u0661\u0665\u0660\u0660", "money_format"),  # Arabic-Indic 1500
        (True, "money_type"),
        (None, "money_type"),
        ([1500], "money_type"),
        (-1, "money_negative"),
        ("-100", "money_negative"),
        (2**63, "money_too_large"),
        (1e300, "money_too_large"),
    ],
)
def test_amount_cents_rejected(value: object, error_type: str) -> None:
    payload = dict(VALID["invoice.created"][0], amount_cents=value)
    details = _errors("invoice.created", payload)
    assert [(d["path"], d["type"]) for d in details] == [("payload.amount_cents", error_type)]


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (5, 5), ("3", 3), (4.0, 4)])
def test_rating_accepted(value: object, expected: int) -> None:
    out = validate_payload("feedback.received", {"service_id": 1, "rating": value})
    assert out["rating"] == expected


@pytest.mark.parametrize("value", [0, 6, -1, 4.5, "cinco", "", True, None, [5]])
def test_rating_rejected(value: object) -> None:
    assert _errors("feedback.received", {"service_id": 1, "rating": value}) == [
        {
            "path": "payload.rating",
            "message": "rating must be an integer from 1 to 5",
            "type": "rating_range",
        }
    ]


@pytest.mark.parametrize("value", [True, "", "   ", None, 1.5, {"id": 1}, "x" * 201])
def test_ids_must_be_strings_or_integers(value: object) -> None:
    details = _errors("service.started", {"service_id": value, "started_at": TS})
    assert [d["path"] for d in details] == ["payload.service_id"]
    assert details[0]["type"].startswith("id_")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2024-05-31", "2024-05-31"), ("2024-05-31T10:00:00-03:00", "2024-05-31")],
)
def test_due_date(value: str, expected: str) -> None:
    payload = dict(VALID["invoice.created"][0], due_date=value)
    assert validate_payload("invoice.created", payload)["due_date"] == expected


@pytest.mark.parametrize("value", ["2024-02-30", "31/05/2024", "", 20240531, None])
def test_bad_due_date(value: object) -> None:
    payload = dict(VALID["invoice.created"][0], due_date=value)
    assert _errors("invoice.created", payload) == [
        {
            "path": "payload.due_date",
            "message": "expected a date like 2024-05-31",
            "type": "date_format",
        }
    ]


def test_payout_period_forms() -> None:
    base = VALID["payout.processed"][0]
    out = validate_payload(
        "payout.processed", dict(base, period={"start": "2024-05-01", "end": "2024-05-15"})
    )
    assert out["period"] == {"start": "2024-05-01", "end": "2024-05-15"}
    details = _errors(
        "payout.processed", dict(base, period={"start": "2024-05-15", "end": "2024-05-01"})
    )
    assert [d["type"] for d in details] == ["period_order"]
    assert [d["type"] for d in _errors("payout.processed", dict(base, period=""))] == [
        "period_format"
    ]


def test_required_text_must_not_be_blank() -> None:
    payload = dict(VALID["payment.failed"][0], reason="  ")
    assert _errors("payment.failed", payload) == [
        {"path": "payload.reason", "message": "must not be empty", "type": "string_empty"}
    ]


def test_name_is_limited() -> None:
    details = _errors("lead.created", {"name": "a" * 201, "email": "a@b.co"})
    assert details == [
        {
            "path": "payload.name",
            "message": "must be at most 200 characters",
            "type": "string_too_long",
        }
    ]


# --- whatsapp.inbound ----------------------------------------------------------------------


def test_inbound_accepts_lid_only_sender() -> None:
    payload = {"phone": None, "phone_raw": "81896604192873@lid", "message_id": "X", "text": "oi"}
    assert validate_payload("whatsapp.inbound", payload) == payload


def test_inbound_needs_sender() -> None:
    assert _errors("whatsapp.inbound", {"message_id": "X", "text": "oi"}) == [
        {
            "path": "payload.phone",
            "message": "phone (or phone_raw) is required",
            "type": "missing_sender",
        }
    ]


@pytest.mark.parametrize(
    ("content", "ok"),
    [
        ({"text": "oi"}, True),
        ({"button_id": "1"}, True),
        ({"list_id": "2"}, True),
        ({"media": {"kind": "image", "url": "https://x"}}, True),
        ({"text": "   "}, False),
        ({}, False),
        ({"button_text": "Ótimo"}, False),
    ],
)
def test_inbound_needs_text_button_list_or_media(content: dict[str, Any], ok: bool) -> None:
    payload = {"phone": "+5544999999999", "message_id": "X", **content}
    if ok:
        assert validate_payload("whatsapp.inbound", payload) == payload
    else:
        assert [d["type"] for d in _errors("whatsapp.inbound", payload)] == ["missing_content"]


def test_inbound_media_needs_a_kind() -> None:
    payload = {"phone": "+5544999999999", "message_id": "X", "media": {"url": "u"}}
    assert [d["path"] for d in _errors("whatsapp.inbound", payload)] == ["payload.media.kind"]


# --- JSON safety ---------------------------------------------------------------------------


def test_values_postgres_jsonb_rejects_are_422_not_500() -> None:
    payload = {
        "name": "Ana\x00",
        "email": "a@b.co",
        "score": float("nan"),
        "deep": {"list": [1, float("inf")]},
        "bad\ud800key": 1,
    }
    details = _errors("lead.created", payload)
    assert [(d["path"], d["type"]) for d in details] == [
        ("payload.name", "json_nul"),
        ("payload.score", "json_number"),
        ("payload.deep.list.1", "json_number"),
        ("payload.bad\ud800key", "json_unicode"),
    ]


def test_too_deep_nesting_is_rejected_without_recursion_error() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = {"a": deep}
    details = _errors("lead.created", {"name": "Ana", "email": "a@b.co", "x": deep})
    assert details[0]["type"] == "json_depth"


def test_json_safety_reports_non_json_python_values() -> None:
    assert json_safety_errors({"a": {1, 2}, 3: "x"}, "p") == [
        {"path": "p", "message": "object keys must be strings", "type": "json_key"},
        {"path": "p.a", "message": "a set is not a JSON value", "type": "json_type"},
    ]


# --- error details helper -------------------------------------------------------------------


class _Sample(BaseModel):
    items: list[int]
    inner: dict[str, int]


def test_pydantic_error_details_format() -> None:
    with pytest.raises(ValidationError) as info:
        _Sample.model_validate({"items": [1, "x"], "inner": {"k": "v"}})
    assert pydantic_error_details(info.value, "body") == [
        {
            "path": "body.items.1",
            "message": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        },
        {
            "path": "body.inner.k",
            "message": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        },
    ]
    assert pydantic_error_details(info.value, "")[0]["path"] == "items.1"


def test_payload_error_message_summarises_details() -> None:
    with pytest.raises(PayloadError, match=r"payload\.rating: rating must be an integer"):
        validate_payload("feedback.received", {"service_id": 1, "rating": 9})


# --- properties ----------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = sorted(
    {name for model in EVENT_MODELS.values() for name in model.model_fields}
    | {"kind", "start", "end"}
)
field_values = (
    json_values
    | st.sampled_from([TS, "2024-05-01T14:30:00", "2024-05-31", "+5511987654321", "a@b.co"])
    | st.sampled_from(["(20) 9999-9999", "1500", "15.5", "5", "", " ", "0xx11 98765-4321"])
)


@settings(max_examples=300)
@given(
    event_type=st.sampled_from(sorted(EVENT_MODELS)) | st.text(max_size=20),
    payload=json_values,
)
def test_arbitrary_json_only_raises_payload_error(event_type: str, payload: object) -> None:
    try:
        out = validate_payload(event_type, payload)
    except PayloadError as exc:
        assert exc.details
        assert all(set(d) == {"path", "message", "type"} for d in exc.details)
        return
    assert isinstance(out, dict)


@settings(max_examples=500)
@given(
    event_type=st.sampled_from(sorted(EVENT_MODELS)),
    payload=st.dictionaries(
        st.sampled_from(FIELD_NAMES),
        field_values | st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=4),
        max_size=8,
    ),
)
def test_plausible_payloads_only_raise_payload_error(
    event_type: str, payload: dict[str, Any]
) -> None:
    try:
        out = validate_payload(event_type, payload)
    except PayloadError as exc:
        assert all(d["path"] == "type" or d["path"].startswith("payload") for d in exc.details)
        return
    # Whatever passes is stable under a second validation (what the worker re-reads).
    assert validate_payload(event_type, out) == out
