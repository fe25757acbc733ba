"""Brazilian phone / WhatsApp id / e-mail normalisation (carinho_outbox.phones)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carinho_outbox.phones import (
    BR_AREA_CODES,
    EmailError,
    PhoneError,
    canonical_whatsapp_id,
    normalize_br_phone,
    normalize_email,
)

E164_BR = re.compile(r"^\+55[0-9]{10,11}$")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+55 (11) 98765-4321", "+5511987654321"),
        ("+5511987654321", "+5511987654321"),
        ("5511987654321", "+5511987654321"),
        ("(11) 98765-4321", "+5511987654321"),
        ("11 98765 4321", "+5511987654321"),
        ("11.98765.4321", "+5511987654321"),
        ("11987654321", "+5511987654321"),
        ("  011 98765-4321  ", "+5511987654321"),
        # Trunk 0 + carrier code (21 = Embratel) + DDD + number.
        ("0 21 11 98765-4321", "+5511987654321"),
        ("021 11 3333-4444", "+551133334444"),
        ("0xx11 98765-4321", "+5511987654321"),
        ("0XX (41) 9999-9999", "+5541999999999"),
        ("0055 11 98765 4321", "+5511987654321"),
        ("+55 (0) 11 98765-4321", "+5511987654321"),
        # Old mobiles without the ninth digit: Z-API reports these as 12 digits.
        ("554199999999", "+5541999999999"),
        ("554499999999", "+5544999999999"),
        ("(41) 8888-7777", "+5541988887777"),
        ("+55 21 6123-4567", "+5521961234567"),
        # Landlines keep 8 digits.
        ("(11) 3333-4444", "+551133334444"),
        ("+55 61 2345-6789", "+556123456789"),
        ("51 5123-4567", "+555151234567"),
        # DDD 55 (Santa Maria, RS) without country code is not mistaken for +55.
        ("55 99999-9999", "+5555999999999"),
        ("5555999999999", "+5555999999999"),
        ("11\u00a098765-4321", "+5511987654321"),
    ],
)
def test_normalize_br_phone_accepts_common_formats(raw: str, expected: str) -> None:
    assert normalize_br_phone(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("(20) 98765-4321", "unknown area code 20"),
        ("23 3333-4444", "unknown area code 23"),
        ("+55 10 98765-4321", "unknown area code 10"),
        ("9876-5432", "too few digits (8)"),
        ("119876543", "too few digits (9)"),
        ("119876543210", "too many digits (12)"),
        ("+1 212 555 1234", "country code must be +55"),
        ("0033 1 23 45 67 89", "country code after 00 must be 55"),
        ("11 8765-43210", "a 9-digit number must be a mobile starting with 9"),
        ("11 0765-4321", "cannot start with 0"),
        ("11 1765-4321", "cannot start with 1"),
        ("11 98765-4321 ramal 2", "characters other than digits"),
        ("tel: 11 98765-4321", "characters other than digits"),
        ("+55 11 9876\uff15-4321", "characters other than digits"),  # fullwidth 5
        (
            "\u0661\u0661\u0669\u0668\u0667\u0666\u0665\u0664\u0663\u0662\u0661",
            "characters other than digits",
        ),
        ("++5511987654321", "characters other than digits"),
        ("+0xx11 98765-4321", "cannot follow '+'"),
        ("-()", "no digits"),
        ("1" * 80, "too long"),
    ],
)
def test_normalize_br_phone_rejects_with_reason(raw: str, reason: str) -> None:
    with pytest.raises(PhoneError) as info:
        normalize_br_phone(raw)
    assert reason in str(info.value)


def test_phone_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown area code 20"):
        normalize_br_phone("20 98765-4321")


def test_non_string_input_raises_phone_error() -> None:
    with pytest.raises(PhoneError, match="must be text"):
        normalize_br_phone(11987654321)  # type: ignore[arg-type]


def test_area_code_list_is_the_anatel_plan() -> None:
    assert len(BR_AREA_CODES) == 67
    never_assigned = {"20", "23", "25", "26", "29", "30", "36", "39", "40", "50", "52"}
    never_assigned |= {"56", "57", "58", "59", "60", "70", "72", "76", "78", "80", "90"}
    assert never_assigned.isdisjoint(BR_AREA_CODES)
    assert {"11", "19", "21", "28", "38", "49", "55", "69", "79", "89", "99"} <= BR_AREA_CODES


@pytest.mark.parametrize("ddd", sorted(BR_AREA_CODES))
def test_every_area_code_accepts_mobile_and_landline(ddd: str) -> None:
    assert normalize_br_phone(f"({ddd}) 91234-5678") == f"+55{ddd}912345678"
    assert normalize_br_phone(f"({ddd}) 3123-4567") == f"+55{ddd}31234567"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5544999999999", ("5544999999999", "+5544999999999")),
        ("554499999999", ("554499999999", "+5544999999999")),
        ("5511987654321@c.us", ("5511987654321@c.us", "+5511987654321")),
        ("5511987654321@s.whatsapp.net", ("5511987654321@s.whatsapp.net", "+5511987654321")),
        ("5511987654321:7@s.whatsapp.net", ("5511987654321:7@s.whatsapp.net", "+5511987654321")),
        ("123456789012345@lid", ("123456789012345@lid", None)),
        ("81896604192873@lid", ("81896604192873@lid", None)),
        ("120363019502650977-group", ("120363019502650977-group", None)),
        ("120363019502650977@g.us", ("120363019502650977@g.us", None)),
        ("status@broadcast", ("status@broadcast", None)),
        ("120363166@newsletter", ("120363166@newsletter", None)),
        # Foreign numbers are not resolved: the hub stores Brazilian E.164 only.
        ("14155552671", ("14155552671", None)),
        ("11987654321", ("11987654321", None)),
        ("5520987654321", ("5520987654321", None)),
        ("", ("", None)),
        ("not-a-phone", ("not-a-phone", None)),
    ],
)
def test_canonical_whatsapp_id(raw: str, expected: tuple[str, str | None]) -> None:
    assert canonical_whatsapp_id(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ana.Silva@Example.COM.br ", "ana.silva@example.com.br"),
        ("joao+lead@gmail.com", "joao+lead@gmail.com"),
        ("mailto:contato@carinho.com.br", "contato@carinho.com.br"),
        ("o'neil@sub.domain-x.org", "o'neil@sub.domain-x.org"),
        ("a@xn--acar-8pa.com.br", "a@xn--acar-8pa.com.br"),
    ],
)
def test_normalize_email_accepts(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("ana.example.com", "no '@'"),
        ("ana@@example.com", "more than one '@'"),
        ("@example.com", "nothing before the '@'"),
        ("ana@", "no domain"),
        ("ana@localhost", "has no dot"),
        ("ana silva@example.com", "spaces"),
        (".ana@example.com", "dots in the wrong place"),
        ("ana..silva@example.com", "dots in the wrong place"),
        ("ana@exa_mple.com", "not a valid domain name"),
        ("ana@-example.com", "not a valid domain name"),
        ("ana@example.c", "top-level domain"),
        ("ana@example.123", "top-level domain"),
        ("joão@example.com", "non-ASCII"),
        ("a" * 65 + "@example.com", "longer than 64"),
        ("a@" + "b" * 250 + ".com", "longer than 254"),
    ],
)
def test_normalize_email_rejects_with_reason(raw: str, reason: str) -> None:
    with pytest.raises(EmailError) as info:
        normalize_email(raw)
    assert reason in str(info.value)


@given(st.text(max_size=40))
def test_normalize_br_phone_only_returns_e164_or_raises(raw: str) -> None:
    try:
        result = normalize_br_phone(raw)
    except PhoneError:
        return
    assert E164_BR.match(result)


_phone_alphabet = st.sampled_from(list("0123456789+-() .x"))


@given(st.text(alphabet=_phone_alphabet, max_size=25))
def test_normalize_br_phone_phone_like_strings(raw: str) -> None:
    try:
        result = normalize_br_phone(raw)
    except PhoneError:
        return
    assert E164_BR.match(result)
    # Normalising a normalised number is a no-op: dedup keys are stable.
    assert normalize_br_phone(result) == result


@given(
    ddd=st.sampled_from(sorted(BR_AREA_CODES)),
    number=st.one_of(
        st.from_regex(r"\A9[0-9]{8}\Z"),
        st.from_regex(r"\A[2-5][0-9]{7}\Z"),
    ),
    fmt=st.sampled_from(
        ["+55 ({d}) {a}-{b}", "55{d}{a}{b}", "0{d} {a} {b}", "({d}) {a}-{b}", "0xx{d}{a}{b}"]
    ),
)
def test_valid_numbers_round_trip_in_any_format(ddd: str, number: str, fmt: str) -> None:
    raw = fmt.format(d=ddd, a=number[:-4], b=number[-4:])
    assert normalize_br_phone(raw) == f"+55{ddd}{number}"


@given(st.text(max_size=40))
def test_canonical_whatsapp_id_never_raises(raw: str) -> None:
    original, canonical = canonical_whatsapp_id(raw)
    assert original == raw
    assert canonical is None or E164_BR.match(canonical)


@given(st.text(max_size=60))
def test_normalize_email_only_raises_email_error(raw: str) -> None:
    try:
        result = normalize_email(raw)
    except EmailError:
        return
    assert result == result.strip().lower()
    assert result.count("@") == 1
