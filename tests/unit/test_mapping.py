"""The mapping engine: formatters, spec validation, rendering, and the seeded default specs."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from carinho_outbox.mapping import (
    FORMATS,
    IDENTITY_SPEC,
    MAX_PATH_DEPTH,
    MAX_RULES,
    MAX_SPEC_BYTES,
    FieldRule,
    MappingError,
    MappingSpec,
    MappingSpecError,
    diff_specs,
    dump_spec,
    parse_spec,
    render,
)

SQL_FILE = Path(__file__).resolve().parents[2] / "sql" / "0003_default_mappings.sql"
META = {
    "id": "0b7e6a52-3f9c-4c2a-9d51-0b8f3c1e2a77",
    "type": "lead.created",
    "source": "site",
    "occurred_at": "2024-05-01T10:20:30-03:00",
}


def fmt(name: str, value: Any, **args: Any) -> Any:
    """Apply one formatter through a real, validated rule (so its arguments are checked too)."""
    spec = parse_spec({"fields": [{"to": "out", "from": "v", "format": name, **args}]})
    return render(spec, {"v": value}, META)["out"]


def fmt_error(name: str, value: Any, **args: Any) -> str:
    spec = parse_spec({"fields": [{"to": "out", "from": "v", "format": name, **args}]})
    with pytest.raises(MappingError) as info:
        render(spec, {"v": value}, META)
    message = str(info.value)
    assert message.startswith("fields[0] (to='out'): format ")
    assert info.value.rule_index == 0
    assert info.value.to == "out"
    return message


# --------------------------------------------------------------------------- formatters


@pytest.mark.parametrize(
    ("raw", "e164", "national", "digits"),
    [
        ("+5541999999999", "+5541999999999", "(41) 99999-9999", "5541999999999"),
        ("(41) 99999-9999", "+5541999999999", "(41) 99999-9999", "5541999999999"),
        ("41 3333-4444", "+554133334444", "(41) 3333-4444", "554133334444"),
        ("041999999999", "+5541999999999", "(41) 99999-9999", "5541999999999"),
        ("+55 11 98765-4321", "+5511987654321", "(11) 98765-4321", "5511987654321"),
        (5541999999999, "+5541999999999", "(41) 99999-9999", "5541999999999"),
    ],
)
def test_phone_formatters(raw: Any, e164: str, national: str, digits: str) -> None:
    assert fmt("phone_e164", raw) == e164
    assert fmt("phone_national", raw) == national
    assert fmt("phone_digits", raw) == digits


def test_foreign_phone_passes_through_but_has_no_national_format() -> None:
    assert fmt("phone_e164", "+1 415 555 0100") == "+14155550100"
    assert fmt("phone_digits", "+1 415 555 0100") == "14155550100"
    assert "not a Brazilian number" in fmt_error("phone_national", "+1 415 555 0100")


@pytest.mark.parametrize(
    "bad", ["abc", "12345", "+12", "(00) 99999-9999", True, 4.1, [1], "9" * 60]
)
@pytest.mark.parametrize("name", ["phone_e164", "phone_national", "phone_digits"])
def test_phone_formatters_reject_garbage(name: str, bad: Any) -> None:
    fmt_error(name, bad)


@pytest.mark.parametrize(
    ("cents", "text"),
    [
        (123456, "1234.56"),
        (5, "0.05"),
        (-5, "-0.05"),
        (0, "0.00"),
        (-123456, "-1234.56"),
        ("700", "7.00"),
        (10**20 + 1, "1000000000000000000.01"),
        (Decimal("250"), "2.50"),
    ],
)
def test_cents_to_decimal(cents: Any, text: str) -> None:
    assert fmt("cents_to_decimal", cents) == text


@pytest.mark.parametrize("bad", [12.5, 12.0, True, "12.5", "abc", [1], {"a": 1}, Decimal("1.5")])
def test_cents_to_decimal_rejects_non_integers(bad: Any) -> None:
    fmt_error("cents_to_decimal", bad)


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        ("1234.56", 123456),
        ("0.5", 50),
        ("-0.05", -5),
        (" 7 ", 700),
        (12, 1200),
        (Decimal("1.10"), 110),
        ("1.230", 123),
        ("99999999999999999999.99", 9999999999999999999999),
        ("123456789012345678901234567890.01", 12345678901234567890123456789001),
        (Decimal("123456789012345678901234567890.01"), 12345678901234567890123456789001),
        (Decimal("1E+2"), 10000),
    ],
)
def test_decimal_to_cents(value: Any, cents: int) -> None:
    result = fmt("decimal_to_cents", value)
    assert result == cents
    assert type(result) is int


@pytest.mark.parametrize(
    "bad", [12.34, "1.234", "1,23", "abc", True, "1e5", Decimal("NaN"), "", "1" * 50, None]
)
def test_decimal_to_cents_rejects_floats_and_inexact(bad: Any) -> None:
    if bad is None:
        # null never reaches a formatter: it is "missing" and the key is omitted.
        assert "out" not in render(
            parse_spec({"fields": [{"to": "out", "from": "v", "format": "decimal_to_cents"}]}),
            {"v": None},
            META,
        )
        return
    message = fmt_error("decimal_to_cents", bad)
    if isinstance(bad, float):
        assert "float" in message


def test_money_round_trip_is_exact() -> None:
    for cents in (1, 10, 99, 100, 101, 123456789012345678, -1, -100, -999):
        assert fmt("decimal_to_cents", fmt("cents_to_decimal", cents)) == cents


@pytest.mark.parametrize(
    ("value", "pattern", "tz", "expected"),
    [
        ("2024-05-01T10:20:30-03:00", "DD/MM/YYYY", None, "01/05/2024"),
        ("2024-05-01T10:20:30-03:00", "YYYY-MM-DD HH:mm:ss", None, "2024-05-01 10:20:30"),
        ("2024-05-01T02:30:00Z", "DD/MM/YYYY HH:mm", "-03:00", "30/04/2024 23:30"),
        ("2024-05-01T02:30:00", "DD/MM/YYYY HH:mm", "-03:00", "01/05/2024 02:30"),
        ("2024-05-01", "DD/MM/YYYY", None, "01/05/2024"),
        ("2024-05-01T09:05:00-03:00", "DD/MM/YYYY 'às' HH'h'mm", None, "01/05/2024 às 09h05"),
        ("2024-05-01T09:05:00+00:00", "YYYYMMDD", "UTC", "20240501"),
        (0, "DD/MM/YYYY HH:mm:ss", None, "01/01/1970 00:00:00"),
    ],
)
def test_date(value: Any, pattern: str, tz: str | None, expected: str) -> None:
    args: dict[str, Any] = {"pattern": pattern}
    if tz:
        args["tz"] = tz
    assert fmt("date", value, **args) == expected


@pytest.mark.parametrize("bad", ["not a date", "2024-13-01", 1.5, [2024], {"y": 1}, True, 10**20])
def test_date_rejects_non_dates(bad: Any) -> None:
    fmt_error("date", bad, pattern="DD/MM/YYYY")


def test_iso_date() -> None:
    assert fmt("iso_date", "2024-05-01T23:30:00-03:00") == "2024-05-01"
    assert fmt("iso_date", "2024-05-01T23:30:00-03:00", tz="UTC") == "2024-05-02"
    assert fmt("iso_date", "2024-05-01") == "2024-05-01"
    fmt_error("iso_date", "01/05/2024")


def test_unix_seconds() -> None:
    assert fmt("unix_seconds", "1970-01-01T00:00:00Z") == 0
    assert fmt("unix_seconds", "2024-05-01T00:00:00-03:00") == 1714532400
    assert fmt("unix_seconds", "2024-05-01T00:00:00", tz="-03:00") == 1714532400
    assert fmt("unix_seconds", 1714532400) == 1714532400
    assert fmt("unix_seconds", "1969-12-31T23:59:59.5+00:00") == -1  # floor, not truncation


def test_unix_seconds_refuses_naive_timestamps_without_tz() -> None:
    # Falling back to the host's zone would make the rendered value depend on the machine.
    assert "no UTC offset" in fmt_error("unix_seconds", "2024-05-01T03:00:00")
    fmt_error("unix_seconds", "yesterday")


def test_text_formatters() -> None:
    assert fmt("upper", "ação") == "AÇÃO"
    assert fmt("lower", "JOSÉ") == "josé"
    assert fmt("trim", "  Maria \n") == "Maria"
    for name in ("upper", "lower", "trim"):
        fmt_error(name, 5)
        fmt_error(name, ["a"])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("x", "x"),
        (5, "5"),
        (True, "true"),
        (False, "false"),
        (1.5, "1.5"),
        ({"b": 1, "a": [2, "ç"]}, '{"a":[2,"ç"],"b":1}'),
        ([1, "a"], '[1,"a"]'),
    ],
)
def test_string(value: Any, text: str) -> None:
    assert fmt("string", value) == text


def test_string_rejects_non_finite_floats() -> None:
    fmt_error("string", float("inf"))


@pytest.mark.parametrize(("value", "number"), [("42", 42), (" -7 ", -7), (3.0, 3), (9, 9)])
def test_int(value: Any, number: int) -> None:
    assert fmt("int", value) == number


@pytest.mark.parametrize("bad", [True, 3.5, "4.2", "9" * 50, "abc", [1], Decimal("2.5")])
def test_int_rejects(bad: Any) -> None:
    fmt_error("int", bad)


@pytest.mark.parametrize(
    ("value", "flag"),
    [
        ("sim", True),
        ("Não", False),
        ("TRUE", True),
        ("no", False),
        (1, True),
        (0, False),
        (True, True),
    ],
)
def test_bool(value: Any, flag: bool) -> None:
    assert fmt("bool", value) is flag


@pytest.mark.parametrize("bad", [2, "talvez", 1.0, [True], ""])
def test_bool_rejects(bad: Any) -> None:
    fmt_error("bool", bad)


def test_join_and_split() -> None:
    assert fmt("join", ["a", 1, None, True]) == "a,1,true"
    assert fmt("join", ["a", "b"], separator=" | ") == "a | b"
    assert fmt("join", "solo") == "solo"
    fmt_error("join", ["a", ["nested"]])
    assert fmt("split", "a, b,,c ") == ["a", "b", "c"]
    assert fmt("split", "a;b", separator=";") == ["a", "b"]
    assert fmt("split", "") == []
    fmt_error("split", ["a", "b"])


def test_every_registered_formatter_is_tested() -> None:
    tested = {
        "phone_e164",
        "phone_national",
        "phone_digits",
        "cents_to_decimal",
        "decimal_to_cents",
        "date",
        "iso_date",
        "unix_seconds",
        "upper",
        "lower",
        "trim",
        "string",
        "int",
        "bool",
        "join",
        "split",
    }
    assert set(FORMATS) == tested


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {
                "fields": [
                    {"to": "a", "from": "a"},
                    {"to": "b", "from": "b"},
                    {"to": "valor", "from": "amount_cents", "format": "cents2dec"},
                ]
            },
            "fields[2] (to='valor'): unknown format 'cents2dec'; known: phone_e164,",
        ),
        ({"fields": [{"to": "a", "from": "x", "const": 1}]}, "fields[0] (to='a'): has both"),
        ({"fields": [{"to": "a"}]}, "fields[0] (to='a'): needs 'from' or 'const'"),
        (
            {"fields": [{"to": "a", "const": None, "format": "upper"}]},
            "fields[0] (to='a'): 'const'",
        ),
        ({"fields": [{"to": "a..b", "from": "x"}]}, "fields[0] (to='a..b'): bad 'to' path"),
        ({"fields": [{"to": "a", "from": "x."}]}, "fields[0] (to='a'): bad 'from' path 'x.'"),
        ({"fields": [{"to": "", "from": "x"}]}, "fields[0] (to=''): 'to' path is empty"),
        ({"fields": [{"to": "a", "from": ["x", ""]}]}, "fields[0] (to='a'): 'from' path is empty"),
        ({"fields": [{"to": "a", "from": []}]}, "fields[0] (to='a'): 'from' list is empty"),
        (
            {"fields": [{"to": ".".join(["k"] * (MAX_PATH_DEPTH + 1)), "from": "x"}]},
            "deeper than 10 segments",
        ),
        ({"fields": [{"to": "items.0", "from": "x"}]}, "fields[0] (to='items.0'): bad 'to' path"),
        ({"fields": [{"to": "a", "from": "items.*"}]}, "'*' is only allowed in drop"),
        (
            {"fields": [{"to": "d", "from": "x", "format": "date", "pattern": "DD/MM/YY"}]},
            "fields[0] (to='d'): unknown token 'YY' in date pattern",
        ),
        (
            {"fields": [{"to": "d", "from": "x", "format": "date", "pattern": "DD de MM"}]},
            "unknown token 'de'",
        ),
        (
            {"fields": [{"to": "d", "from": "x", "format": "date", "pattern": "DD 'MM"}]},
            "unterminated quote",
        ),
        (
            {"fields": [{"to": "d", "from": "x", "format": "date"}]},
            "format 'date' needs a 'pattern'",
        ),
        (
            {"fields": [{"to": "d", "from": "x", "format": "upper", "pattern": "DD"}]},
            "fields[0] (to='d'): 'pattern' does not apply to format 'upper'",
        ),
        (
            {"fields": [{"to": "d", "from": "x", "separator": ","}]},
            "'separator' does not apply to format None",
        ),
        (
            {"fields": [{"to": "d", "from": "x", "format": "iso_date", "tz": "America/Sao_Paulo"}]},
            "fields[0] (to='d'): bad tz 'America/Sao_Paulo'",
        ),
        (
            {"fields": [{"to": "d", "from": "x", "format": "iso_date", "tz": "+25:00"}]},
            "bad tz '+25:00'",
        ),
        (
            {"fields": [{"to": "d", "from": "x", "format": "split", "separator": ""}]},
            "non-empty separator",
        ),
        (
            {"fields": [{"to": "a", "from": "x", "required": True, "default": 1}]},
            "fields[0] (to='a'): 'required' and 'default' exclude each other",
        ),
        (
            {"fields": [{"to": "a", "from": ["x", "y"], "format": "upper"}]},
            "fields[0] (to='a'): a list 'from' needs format 'join'",
        ),
        (
            {"fields": [{"to": "v", "from": "x", "default": "abc", "format": "cents_to_decimal"}]},
            "fields[0] (to='v'): default 'abc' fails format 'cents_to_decimal'",
        ),
        ({"fields": [{"to": "a", "from": "@event.nope"}]}, "unknown reference '@event.nope'"),
        ({"fields": [{"to": "a", "from": 5}]}, "fields[0] (to='a'): from: must be a path string"),
        ({"fields": [{"to": "a", "fromm": "x"}]}, "fields[0] (to='a'): unknown key 'fromm'"),
        ({"fields": [{"to": "a", "from": "x", "format": 3}]}, "fields[0] (to='a'): format:"),
        ({"fields": ["a"]}, "fields[0] (to=None):"),
        ({"mode": "replace"}, "mode: Input should be 'merge' or 'only_listed'"),
        ({"fields": "a"}, "fields: Input should be a valid list"),
        ({"extra": 1}, "unknown key 'extra'"),
        (
            {"fields": [{"to": "a", "from": "x"}, {"to": "a", "from": "y"}]},
            "fields[1] (to='a'): collides with fields[0] (to='a')",
        ),
        (
            {"fields": [{"to": "a", "from": "x"}, {"to": "a.b", "from": "y"}]},
            "fields[1] (to='a.b'): collides with fields[0] (to='a')",
        ),
        (
            {"fields": [{"to": "a.b.c", "from": "x"}, {"to": "a.b", "from": "y"}]},
            "fields[1] (to='a.b'): collides with fields[0] (to='a.b.c')",
        ),
        ({"drop": ["a..b"]}, "drop[0] ('a..b'): bad drop path 'a..b': empty segment"),
        ({"drop": [3]}, "drop[0]: Input should be a valid string"),
        (
            {"fields": [{"to": "cliente.cpf", "from": "cpf"}], "drop": ["x", "cliente"]},
            "fields[0] (to='cliente.cpf'): is removed by drop[1] ('cliente')",
        ),
        (
            {"fields": [{"to": "c.cpf", "from": "cpf"}], "drop": ["*.cpf"]},
            "is removed by drop[0] ('*.cpf')",
        ),
        (
            {"fields": [{"to": f"k{i}", "const": i} for i in range(MAX_RULES + 1)]},
            "too many rules: 201 > 200",
        ),
    ],
)
def test_spec_errors_name_the_rule(spec: Any, expected: str) -> None:
    with pytest.raises(MappingSpecError) as info:
        parse_spec(spec)
    assert expected in str(info.value)
    assert info.value.problems
    assert isinstance(info.value, ValueError)


def test_all_problems_are_reported_at_once() -> None:
    spec = {"fields": [{"to": "a"}, {"to": "b", "from": "x", "format": "nope"}]}
    with pytest.raises(MappingSpecError) as info:
        parse_spec(spec)
    assert len(info.value.problems) == 2
    assert "fields[0] (to='a')" in info.value.problems[0]
    assert "fields[1] (to='b')" in info.value.problems[1]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("[", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        (None, "must be a JSON object"),
        ({"fields": [{"to": "a", "const": "x" * MAX_SPEC_BYTES}]}, "larger than"),
        ("{" + " " * MAX_SPEC_BYTES + "}", "larger than"),
        ({"fields": [{"to": "a", "const": {1, 2}}]}, "not JSON data"),
    ],
)
def test_parse_spec_rejects_non_specs(raw: Any, expected: str) -> None:
    with pytest.raises(MappingSpecError, match=expected):
        parse_spec(raw)


def test_parse_spec_accepts_json_text_bytes_and_models() -> None:
    text = '{"mode":"only_listed","fields":[{"to":"n","from":"name"}]}'
    spec = parse_spec(text)
    assert parse_spec(text.encode()) == spec
    assert parse_spec(spec) is spec
    assert spec.fields[0] == FieldRule(to="n", from_="name")


def test_identity_spec() -> None:
    assert parse_spec({}) == IDENTITY_SPEC
    assert parse_spec({"mode": "merge", "fields": []}) == IDENTITY_SPEC
    assert dump_spec(IDENTITY_SPEC) == {"mode": "merge", "fields": [], "drop": []}


def test_specs_are_immutable() -> None:
    with pytest.raises(ValidationError):
        IDENTITY_SPEC.mode = "only_listed"  # type: ignore[misc]
    assert isinstance(IDENTITY_SPEC.fields, tuple)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ValidationError):
        MappingSpec(fields=(FieldRule(to="a", const=1), FieldRule(to="a", const=2)))
    with pytest.raises(ValidationError):
        FieldRule(to="a", from_="x", format="nope")


def test_explicit_null_const_and_default_are_values() -> None:
    spec = parse_spec(
        {"fields": [{"to": "a", "const": None}, {"to": "b", "from": "missing", "default": None}]}
    )
    assert render(spec, {}, META) == {"a": None, "b": None}
    assert dump_spec(spec)["fields"] == [
        {"to": "a", "const": None},
        {"to": "b", "from": "missing", "default": None},
    ]


def test_dump_spec_round_trips_and_is_canonical() -> None:
    raw = {
        "fields": [
            {"format": "join", "from": ["a", "b"], "to": "t", "separator": ";", "required": False},
            {"to": "v", "from": "c", "required": True, "format": "cents_to_decimal"},
        ],
        "drop": ["secret"],
    }
    spec = parse_spec(raw)
    dumped = dump_spec(spec)
    assert dumped == {
        "mode": "merge",
        "fields": [
            {"to": "t", "from": ["a", "b"], "format": "join", "separator": ";"},
            {"to": "v", "from": "c", "required": True, "format": "cents_to_decimal"},
        ],
        "drop": ["secret"],
    }
    assert parse_spec(json.loads(json.dumps(dumped))) == spec


# --------------------------------------------------------------------------- render


PAYLOAD: dict[str, Any] = {
    "name": "Maria",
    "phone": "+5541999999999",
    "amount_cents": 123456,
    "utm_source": "google",
    "utm_campaign": None,
    "internal_notes": "não enviar",
    "client": {"id": "c1", "cpf": "123", "address": {"city": "Curitiba"}},
    "items": [{"id": "i1", "cost_cents": 10}, {"id": "i2", "cost_cents": 20}],
}


def test_merge_keeps_payload_and_applies_rules() -> None:
    spec = parse_spec(
        {
            "mode": "merge",
            "fields": [
                {"to": "cliente.telefone", "from": "phone", "format": "phone_national"},
                {"to": "origem", "const": "carinho"},
                {"to": "valor", "from": "amount_cents", "format": "cents_to_decimal"},
                {"to": "nome", "from": "nickname", "default": "Sem nome", "format": "upper"},
                {"to": "tags", "from": ["utm_source", "utm_campaign"], "format": "join"},
                {"to": "name", "from": "name", "format": "upper"},
            ],
            "drop": ["internal_notes"],
        }
    )
    out = render(spec, PAYLOAD, META)
    expected = {k: v for k, v in PAYLOAD.items() if k != "internal_notes"}
    expected |= {
        "name": "MARIA",
        "cliente": {"telefone": "(41) 99999-9999"},
        "origem": "carinho",
        "valor": "1234.56",
        "nome": "SEM NOME",
        "tags": "google",
    }
    assert out == expected
    # Overwritten keys keep their place: the payload's order is part of what was sent.
    assert next(iter(out)) == "name"


def test_only_listed_starts_empty() -> None:
    spec = parse_spec(
        {
            "mode": "only_listed",
            "fields": [
                {"to": "nome", "from": "name"},
                {"to": "cidade", "from": "client.address.city"},
                {"to": "primeiro", "from": "items.0.id"},
                {"to": "ultimo", "from": "items.-1.id"},
                {"to": "nada", "from": "items.5.id"},
            ],
        }
    )
    assert render(spec, PAYLOAD, META) == {
        "nome": "Maria",
        "cidade": "Curitiba",
        "primeiro": "i1",
        "ultimo": "i2",
    }


def test_missing_source_without_default_omits_or_keeps() -> None:
    rules = [{"to": "name", "from": "nome"}, {"to": "x", "from": "utm_campaign"}]
    merged = render(parse_spec({"fields": rules}), PAYLOAD, META)
    assert merged["name"] == "Maria"  # merge leaves the existing key as it was
    assert "x" not in merged
    listed = render(parse_spec({"mode": "only_listed", "fields": rules}), PAYLOAD, META)
    assert listed == {}


def test_defaults_apply_to_missing_and_null_and_are_formatted() -> None:
    spec = parse_spec(
        {
            "mode": "only_listed",
            "fields": [
                {"to": "a", "from": "utm_campaign", "default": "direto"},
                {"to": "b", "from": "nope", "default": 0, "format": "cents_to_decimal"},
                {"to": "c", "from": ["nope", "utm_campaign"], "default": "-", "format": "join"},
                {"to": "d", "from": "name", "default": "x"},
                {"to": "e", "from": "nope", "default": {"k": [1]}},
            ],
        }
    )
    assert render(spec, PAYLOAD, META) == {
        "a": "direto",
        "b": "0.00",
        "c": "-",
        "d": "Maria",
        "e": {"k": [1]},
    }


def test_required_missing_raises_naming_the_rule() -> None:
    spec = parse_spec(
        {"fields": [{"to": "ok", "const": 1}, {"to": "valor", "from": "total", "required": True}]}
    )
    with pytest.raises(MappingError, match=r"fields\[1\] \(to='valor'\): required source 'total'"):
        render(spec, PAYLOAD, META)
    with pytest.raises(MappingError) as info:
        render(spec, {"total": None}, META)
    assert info.value.rule_index == 1
    assert render(spec, {"total": 0}, META)["valor"] == 0


def test_event_meta_and_whole_payload() -> None:
    spec = parse_spec(
        {
            "mode": "only_listed",
            "fields": [
                {"to": "evento.id", "from": "@event.id"},
                {"to": "evento.tipo", "from": "@event.type"},
                {"to": "evento.origem", "from": "@event.source"},
                {"to": "evento.dia", "from": "@event.occurred_at", "format": "iso_date"},
                {"to": "dados", "from": "@payload"},
            ],
        }
    )
    out = render(spec, {"a": 1}, META)
    assert out == {
        "evento": {"id": META["id"], "tipo": "lead.created", "origem": "site", "dia": "2024-05-01"},
        "dados": {"a": 1},
    }


def test_db_typed_meta_is_rendered_as_json() -> None:
    spec = parse_spec(
        {
            "mode": "only_listed",
            "fields": [
                {"to": "id", "from": "@event.id"},
                {"to": "at", "from": "@event.occurred_at"},
                {"to": "src", "from": "@event.source", "default": "desconhecida"},
            ],
        }
    )
    meta = {"id": UUID(META["id"]), "occurred_at": datetime(2024, 5, 1, 13, 0, tzinfo=UTC)}
    assert render(spec, {}, meta) == {
        "id": META["id"],
        "at": "2024-05-01T13:00:00+00:00",
        "src": "desconhecida",
    }


def test_nested_output_merges_into_existing_objects() -> None:
    spec = parse_spec(
        {
            "fields": [
                {"to": "client.address.uf", "const": "PR"},
                {"to": "a.b.c.d", "const": True},
            ]
        }
    )
    out = render(spec, PAYLOAD, META)
    assert out["client"]["address"] == {"city": "Curitiba", "uf": "PR"}
    assert out["a"] == {"b": {"c": {"d": True}}}


def test_writing_inside_a_scalar_is_a_mapping_error() -> None:
    spec = parse_spec({"fields": [{"to": "name.first", "from": "name"}]})
    with pytest.raises(MappingError, match=r"fields\[0\] \(to='name.first'\): cannot write inside"):
        render(spec, PAYLOAD, META)


def test_drop_is_applied_last_with_wildcards() -> None:
    spec = parse_spec(
        {
            "mode": "merge",
            "fields": [{"to": "notas", "from": "internal_notes"}],
            "drop": ["internal_notes", "client.cpf", "items.*.cost_cents", "nope.x", "items.9.id"],
        }
    )
    out = render(spec, PAYLOAD, META)
    assert "internal_notes" not in out
    assert out["notas"] == "não enviar"  # rules read the payload, not the output
    assert out["client"] == {"id": "c1", "address": {"city": "Curitiba"}}
    assert out["items"] == [{"id": "i1"}, {"id": "i2"}]
    listed = parse_spec(
        {"mode": "only_listed", "fields": [{"to": "c", "from": "client"}], "drop": ["c.cpf"]}
    )
    assert render(listed, PAYLOAD, META) == {"c": {"id": "c1", "address": {"city": "Curitiba"}}}


def test_render_never_mutates_or_aliases_inputs() -> None:
    spec = parse_spec(
        {
            "fields": [{"to": "c", "from": "client"}, {"to": "k", "const": {"list": [1]}}],
            "drop": ["client.address", "items.*.id"],
        }
    )
    before = copy.deepcopy(PAYLOAD)
    out = render(spec, PAYLOAD, META)
    assert before == PAYLOAD
    out["c"]["id"] = "changed"
    out["k"]["list"].append(2)
    out["items"][0]["new"] = 1
    assert before == PAYLOAD
    assert render(spec, PAYLOAD, META)["k"] == {"list": [1]}


def test_render_is_deterministic() -> None:
    spec = parse_spec(
        {
            "fields": [
                {"to": "t", "from": ["utm_source", "name"], "format": "join"},
                {"to": "d", "from": "@event.occurred_at", "format": "date", "pattern": "DD/MM"},
                {"to": "s", "from": "client", "format": "string"},
            ]
        }
    )
    first = render(spec, PAYLOAD, META)
    for _ in range(3):
        again = render(spec, copy.deepcopy(PAYLOAD), dict(META))
        assert json.dumps(again) == json.dumps(first)


def test_render_rejects_non_object_payloads() -> None:
    with pytest.raises(MappingError, match="payload must be a JSON object"):
        render(IDENTITY_SPEC, [1, 2], META)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- diff


def test_diff_specs() -> None:
    old = parse_spec({"fields": [{"to": "valor", "from": "amount_cents"}]})
    new = parse_spec(
        {"fields": [{"to": "valor", "from": "amount_cents", "format": "cents_to_decimal"}]}
    )
    lines = diff_specs(old, new, old_label="v1", new_label="v2")
    assert lines[:2] == ["--- v1", "+++ v2"]
    assert '-    {"to": "valor", "from": "amount_cents"}' in lines
    assert '+    {"to": "valor", "from": "amount_cents", "format": "cents_to_decimal"}' in lines
    assert all(not line.endswith("\n") for line in lines)


def test_diff_of_equivalent_specs_is_empty() -> None:
    a = parse_spec({"fields": [{"to": "a", "from": "b", "required": False}]})
    b = parse_spec('{"mode": "merge", "fields": [{"from": "b", "to": "a"}], "drop": []}')
    assert diff_specs(a, b) == []
    assert diff_specs(IDENTITY_SPEC, IDENTITY_SPEC) == []


# --------------------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
json_payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=8)


@settings(max_examples=300, deadline=None)
@given(payload=json_payloads)
def test_identity_spec_returns_payload_unchanged(payload: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    assert render(IDENTITY_SPEC, payload, META) == before
    assert render(parse_spec({"mode": "merge", "fields": []}), payload, META) == before
    assert payload == before


KEYS = ["a", "b", "phone", "amount", "when", "name", "items", "0", "-1", "x"]
interesting_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            "+5541999999999",
            "(41) 3333-4444",
            "+1 415 555 0100",
            "2024-05-01T10:20:30-03:00",
            "2024-05-01",
            "2024-05-01T10:20:30",
            "1234.56",
            "-0.05",
            "sim",
            "a, b,,c",
            "9" * 30,
            "",
        ]
    ),
    st.integers(min_value=-(10**15), max_value=10**15),
)
payload_values = st.recursive(
    interesting_values,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=15,
)
fuzz_payloads = st.dictionaries(st.sampled_from(KEYS), payload_values, max_size=8)
paths = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join)
sources = st.one_of(
    paths,
    st.sampled_from(["@event.id", "@event.type", "@event.occurred_at", "@payload"]),
    st.lists(paths, min_size=1, max_size=3),
)
out_paths = st.lists(
    st.sampled_from(["out", "a", "b", "name", "c", "x"]), min_size=1, max_size=3
).map(".".join)


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": draw(out_paths)}
    if draw(st.booleans()):
        rule["const"] = draw(json_values)
        return rule
    rule["from"] = draw(sources)
    name = draw(st.none() | st.sampled_from(sorted(FORMATS)))
    if name is not None:
        rule["format"] = name
    if name in ("join", "split") and draw(st.booleans()):
        rule["separator"] = draw(st.sampled_from([",", ";", " | "]))
    if name == "date":
        rule["pattern"] = draw(st.sampled_from(["DD/MM/YYYY", "YYYY-MM-DD HH:mm:ss", "HH'h'mm"]))
    if name in ("date", "iso_date", "unix_seconds") and draw(st.booleans()):
        rule["tz"] = draw(st.sampled_from(["UTC", "-03:00", "+05:30"]))
    choice = draw(st.sampled_from(["none", "default", "required"]))
    if choice == "default":
        rule["default"] = draw(interesting_values)
    elif choice == "required":
        rule["required"] = True
    return rule


fuzz_specs = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["merge", "only_listed"]),
        "fields": st.lists(rules(), max_size=6),
        "drop": st.lists(st.sampled_from(["a", "b.a", "*.x", "items.*.a", "out.a"]), max_size=3),
    }
)


@settings(max_examples=500, deadline=None)
@given(raw=fuzz_specs, payload=fuzz_payloads)
def test_specs_from_valid_pieces_only_raise_mapping_errors(
    raw: dict[str, Any], payload: dict[str, Any]
) -> None:
    try:
        spec = parse_spec(raw)
    except MappingSpecError:
        return
    before = copy.deepcopy(payload)
    try:
        out = render(spec, payload, META)
    except MappingError:
        return
    finally:
        assert payload == before
    assert render(spec, copy.deepcopy(payload), META) == out
    json.dumps(out)  # what leaves the hub is always plain JSON
    assert parse_spec(dump_spec(spec)) == spec


@settings(max_examples=300, deadline=None)
@given(raw=st.dictionaries(st.sampled_from(["mode", "fields", "drop", "x"]), json_values))
def test_arbitrary_json_specs_only_raise_spec_errors(raw: dict[str, Any]) -> None:
    try:
        parse_spec(raw)
    except MappingSpecError:
        pass


@given(cents=st.integers(min_value=-(10**30), max_value=10**30))
def test_money_round_trip_property(cents: int) -> None:
    text = fmt("cents_to_decimal", cents)
    assert re.fullmatch(r"-?[0-9]+\.[0-9]{2}", text)
    assert int(text.replace(".", "")) == cents
    assert fmt("decimal_to_cents", text) == cents


# --------------------------------------------------------------------------- seeded defaults

CATALOG: dict[str, set[str]] = {
    "lead.created": {"crm", "marketing"},
    "lead.updated": {"crm"},
    "client.registered": {"crm", "financeiro", "marketing"},
    "client.updated": {"crm", "operacao"},
    "service.scheduled": {"crm", "operacao", "cuidadores", "financeiro"},
    "service.started": {"crm", "operacao"},
    "service.completed": {"crm", "financeiro", "cuidadores"},
    "service.cancelled": {"crm", "operacao", "financeiro"},
    "payment.received": {"crm", "operacao"},
    "payment.failed": {"crm"},
    "invoice.created": {"crm"},
    "payout.processed": {"cuidadores"},
    "whatsapp.inbound": {"crm", "atendimento"},
    "feedback.received": {"crm", "cuidadores"},
}
CHANNELS = {
    ("lead.created", "whatsapp"),
    ("client.registered", "email"),
    ("client.registered", "whatsapp"),
    ("service.completed", "whatsapp"),
    ("service.completed", "email"),
}
ROW_RE = re.compile(
    r"\(\s*'([a-z_.]+)'\s*,\s*'([a-z]+)'\s*,\s*(\d+)\s*,\s*'((?:[^']|'')*)'::jsonb\s*,"
    r"\s*(true|false)\s*,\s*'((?:[^']|'')*)'"
)


def _seed_rows() -> list[tuple[str, str, int, MappingSpec, bool, str]]:
    sql = SQL_FILE.read_text(encoding="utf-8")
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    rows = []
    for m in ROW_RE.finditer(body):
        spec = parse_spec(json.loads(m[4].replace("''", "'")))
        rows.append((m[1], m[2], int(m[3]), spec, m[5] == "true", m[6]))
    # Every VALUES tuple must have been understood, or the pair check below proves nothing.
    assert len(rows) == body.count("::jsonb")
    return rows


def test_seeded_mappings_cover_exactly_the_catalog() -> None:
    rows = _seed_rows()
    expected = {(t, d) for t, dests in CATALOG.items() for d in dests} | CHANNELS
    assert sum(len(d) for d in CATALOG.values()) == 29
    pairs = [(t, d) for t, d, *_ in rows]
    assert len(pairs) == len(set(pairs)) == 34
    assert set(pairs) == expected
    for _, _, version, _, active, created_by in rows:
        assert (version, active, created_by) == (1, True, "migration")


def test_seeded_mappings_render_catalog_payloads() -> None:
    payloads: dict[str, dict[str, Any]] = {
        "lead.created": {"name": "Ana", "phone": "+5541999999999", "utm_source": "google"},
        "client.registered": {"client_id": "c1", "name": "Ana", "email": "ana@example.com"},
        "service.scheduled": {
            "service_id": "s1",
            "client_id": "c1",
            "starts_at": "2024-05-01T08:00:00-03:00",
            "ends_at": "2024-05-01T20:00:00-03:00",
            "amount_cents": 45000,
        },
        "payment.received": {
            "payment_id": "p1",
            "invoice_id": "i1",
            "client_id": "c1",
            "amount_cents": 123456,
            "paid_at": "2024-05-01T10:00:00-03:00",
        },
        "payout.processed": {
            "payout_id": "po1",
            "caregiver_id": "cg1",
            "amount_cents": 99,
            "period": "2024-04",
        },
    }
    for event_type, destination, _, spec, _, _ in _seed_rows():
        payload = payloads.get(event_type, {"service_id": "s1", "x": 1})
        out = render(spec, payload, META)
        # Defaults only ever add keys: nothing the source sent is lost or changed.
        assert {k: out[k] for k in payload} == payload, (event_type, destination)
        if "amount_cents" in payload and "valor" in out:
            assert int(out["valor"].replace(".", "")) == payload["amount_cents"]
    specs = {(t, d): spec for t, d, _, spec, _, _ in _seed_rows()}
    scheduled = render(
        specs["service.scheduled", "financeiro"], payloads["service.scheduled"], META
    )
    assert scheduled["valor"] == "450.00"
    greeting = render(specs["lead.created", "whatsapp"], payloads["lead.created"], META)
    assert greeting["phone_digits"] == "5541999999999"
