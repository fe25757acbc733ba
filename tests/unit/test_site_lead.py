"""The website lead form (carinho_outbox.site_lead)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from carinho_outbox.payloads import PayloadError, pydantic_error_details, validate_payload
from carinho_outbox.site_lead import SiteLeadForm


def details(data: Any, prefix: str = "") -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        SiteLeadForm.model_validate(data)
    return pydantic_error_details(info.value, prefix)


def test_full_form_becomes_lead_created_payload() -> None:
    form = SiteLeadForm.model_validate(
        {
            "name": "  Maria da Silva ",
            "phone": "(11) 98765-4321",
            "email": "Maria@Example.com",
            "message": "Cuidadora para minha mãe, 3x por semana",
            "page_url": "https://carinho.com.br/sp",
            "consent": "on",
            "utm_source": "google",
            "utm_medium": "cpc",
            "utm_campaign": "cuidadoras-sp",
            "utm_term": "cuidador de idosos",
            "utm_content": "anuncio-1",
            "gclid": "Cj0KCQ",
            "fbclid": "IwAR0",
            "city": "São Paulo",
        }
    )
    assert form.to_lead_payload() == {
        "name": "Maria da Silva",
        "phone": "+5511987654321",
        "email": "maria@example.com",
        "message": "Cuidadora para minha mãe, 3x por semana",
        "page_url": "https://carinho.com.br/sp",
        "consent": True,
        "utm_source": "google",
        "utm_medium": "cpc",
        "utm_campaign": "cuidadoras-sp",
        "utm_term": "cuidador de idosos",
        "utm_content": "anuncio-1",
        "gclid": "Cj0KCQ",
        "fbclid": "IwAR0",
        "city": "São Paulo",
    }


def test_minimal_form_and_blank_inputs() -> None:
    # Form-encoded posts send "" for every input left empty.
    form = SiteLeadForm.model_validate(
        {"name": "Ana", "phone": "", "email": "ana@x.com", "message": "", "utm_source": " "}
    )
    assert form.to_lead_payload() == {"name": "Ana", "email": "ana@x.com", "consent": True}


def test_portuguese_field_names() -> None:
    form = SiteLeadForm.model_validate(
        {"nome": "José", "telefone": "41 9999-8888", "mensagem": "Olá", "e-mail": "J@X.COM"}
    )
    assert form.to_lead_payload() == {
        "name": "José",
        "phone": "+5541999998888",
        "email": "j@x.com",
        "message": "Olá",
        "consent": True,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("on", True),
        ("sim", True),
        ("1", True),
        ("false", False),
        ("não", False),
        ("nao", False),
        ("0", False),
        ("", True),
        (None, True),
    ],
)
def test_consent_values(value: object, expected: bool) -> None:
    form = SiteLeadForm.model_validate({"name": "Ana", "email": "a@b.co", "consent": value})
    assert form.consent is expected
    assert form.to_lead_payload()["consent"] is expected


def test_consent_defaults_to_true() -> None:
    assert SiteLeadForm.model_validate({"name": "Ana", "email": "a@b.co"}).consent is True


def test_payload_passes_event_validation_unchanged() -> None:
    payload = SiteLeadForm.model_validate(
        {"name": "Ana", "whatsapp": "5511987654321", "utm_campaign": "x", "extra": [1, 2]}
    ).to_lead_payload()
    assert validate_payload("lead.created", payload) == payload


def test_needs_phone_or_email() -> None:
    assert details({"name": "Ana", "phone": " ", "email": ""}) == [
        {"path": "phone", "message": "either phone or email is required", "type": "missing_contact"}
    ]


def test_needs_a_name() -> None:
    assert details({"phone": "11987654321"}) == [
        {"path": "name", "message": "Field required", "type": "missing"}
    ]
    assert details({"name": "  ", "phone": "11987654321"}) == [
        {"path": "name", "message": "must not be empty", "type": "string_empty"}
    ]


def test_errors_name_each_bad_field_with_reason() -> None:
    got = details(
        {"name": "Ana", "phone": "(20) 1234-5678", "email": "ana@", "consent": "talvez"}, "body"
    )
    assert got == [
        {
            "path": "body.phone",
            "message": "invalid phone number: unknown area code 20",
            "type": "phone_invalid",
        },
        {
            "path": "body.email",
            "message": "invalid e-mail address: e-mail has no domain after the '@'",
            "type": "email_invalid",
        },
        {
            "path": "body.consent",
            "message": "consent must be true or false",
            "type": "consent_invalid",
        },
    ]


def test_alias_errors_point_at_the_field_the_site_sent() -> None:
    assert [d["path"] for d in details({"nome": "Ana", "telefone": "123"})] == ["telefone"]


def test_non_string_fields_are_rejected_cleanly() -> None:
    got = details({"name": ["Ana"], "email": "a@b.co", "utm_source": {"x": 1}})
    assert [(d["path"], d["type"]) for d in got] == [
        ("name", "string_type"),
        ("utm_source", "string_type"),
    ]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=15,
)
FORM_KEYS = [
    "name", "nome", "phone", "telefone", "whatsapp", "email", "e-mail", "message", "page_url",
    "consent", "utm_source", "utm_medium", "utm_campaign", "gclid", "fbclid", "other",
]  # fmt: skip
form_values = json_values | st.sampled_from(
    ["Ana", "", "11 98765-4321", "(20) 1234-5678", "a@b.co", "x@", "on", "não"]
)


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_only_raises_validation_error(data: Any) -> None:
    try:
        form = SiteLeadForm.model_validate(data)
    except ValidationError as exc:
        assert all(set(d) == {"path", "message", "type"} for d in pydantic_error_details(exc, ""))
        return
    assert isinstance(form.to_lead_payload(), dict)


@settings(max_examples=400)
@given(st.dictionaries(st.sampled_from(FORM_KEYS), form_values, max_size=8))
def test_plausible_forms_produce_valid_lead_payloads(data: dict[str, Any]) -> None:
    try:
        form = SiteLeadForm.model_validate(data)
    except ValidationError:
        return
    payload = form.to_lead_payload()
    assert payload["name"].strip() == payload["name"] != ""
    assert "phone" in payload or "email" in payload
    # The site's leads go through the same event validation as everything else; only values
    # Postgres cannot store (NaN, NUL) in unknown fields may still be refused there.
    try:
        assert validate_payload("lead.created", payload) == payload
    except PayloadError as exc:
        assert {d["type"] for d in exc.details} <= {"json_nul", "json_number", "json_unicode"}
