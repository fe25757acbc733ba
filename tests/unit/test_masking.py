"""LGPD masking of logs (carinho_outbox.masking)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carinho_outbox.masking import MaskingFilter, mask_text, mask_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ligar para +55 (11) 98765-4321 hoje", "ligar para +55*******4321 hoje"),
        ("+5511987654321", "+55*******4321"),
        ("+55 41 9999-8888", "+55******8888"),
        ("zapi phone 5511987654321", "zapi phone 55*******4321"),
        ("zapi phone 554199999999", "zapi phone 55******9999"),
        ("(11) 98765-4321", "*******4321"),
        ("(11) 3333-4444", "******4444"),
        ("11 98765-4321", "*******4321"),
        ("11987654321", "*******4321"),
        ("celular 98765-4321.", "celular *****4321."),
        ("foreign +14155552671", "foreign +*******2671"),
        ("https://wa.me/5511987654321?text=oi", "https://wa.me/55*******4321?text=oi"),
        ("e-mail: Joao.Silva@Example.com.br!", "e-mail: J***@Example.com.br!"),
        ("<joão@exemplo.com>", "<j***@exemplo.com>"),
        ("cpf 123.456.789-09 ok", "cpf ***.***.***-09 ok"),
        ("cpf 123456789-09", "cpf ***.***.***-09"),
        # A bare 11-digit CPF is recognised by its check digits, not mistaken for a phone.
        ("cpf 52998224725", "cpf ***.***.***-25"),
        ("lid 81896604192873@lid", "lid **********2873@lid"),
        (
            "lead +55 11 98765-4321 / ana@x.com / 529.982.247-25",
            "lead +55*******4321 / a***@x.com / ***.***.***-25",
        ),
    ],
)
def test_mask_text_masks_personal_data(text: str, expected: str) -> None:
    assert mask_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "delivery 550e8400-e29b-41d4-a716-446655440000 claimed",
        "event 5511987654321a",
        "momment 1632228849000 epoch 1632228849",
        "paid_at 2024-05-01T14:30:00-03:00 due 2024-05-31",
        "amount_cents=150000 took 12.5ms attempt=3",
        "period 2023-2024",
        "version 1.2.3 build 20240501",
        "no digits at all",
        "",
        "ip 192.168.10.200 port 5432",
    ],
)
def test_mask_text_leaves_non_personal_data_alone(text: str) -> None:
    assert mask_text(text) == text


def test_mask_text_is_idempotent() -> None:
    once = mask_text("+55 11 98765-4321 ana@x.com 123.456.789-09 5511987654321")
    assert mask_text(once) == once
    assert "98765" not in once and "ana@" not in once and "123.456" not in once


def test_mask_value_masks_recursively_and_by_key() -> None:
    value = {
        "phone": "5511987654321",
        "telefone": 5511987654321,
        "customer": {
            "email": "Ana@Example.com",
            "cpf": "52998224725",
            "contacts": [{"celular": "(11) 98765-4321"}, "write to bia@x.org"],
        },
        "phones": ["+5511987654321", "(41) 3333-4444"],
        "note": "ligar 11 98765-4321",
        "phone_raw": "81896604192873@lid",
        "email_verified": True,
        "count": 5511987654321,
        "missing_phone": None,
    }
    assert mask_value(value) == {
        "phone": "55*******4321",
        "telefone": "55*******4321",
        "customer": {
            "email": "A***@Example.com",
            "cpf": "***.***.***-25",
            "contacts": [{"celular": "*******4321"}, "write to b***@x.org"],
        },
        "phones": ["+55*******4321", "******4444"],
        "note": "ligar *******4321",
        "phone_raw": "**********2873@lid",
        "email_verified": True,
        "count": 5511987654321,
        "missing_phone": None,
    }


def test_mask_value_keeps_shapes_and_does_not_mutate() -> None:
    original = {"items": ("a 11987654321", 3, None), "n": 1.5, "email": "x"}
    masked = mask_value(original)
    assert masked == {"items": ("a *******4321", 3, None), "n": 1.5, "email": "***"}
    assert original["items"] == ("a 11987654321", 3, None)


def test_mask_value_survives_deep_nesting() -> None:
    deep: object = "11987654321"
    for _ in range(100):
        deep = [deep]
    masked = mask_value(deep)
    for _ in range(33):
        masked = masked[0]
    assert masked == "<too deep>"


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, _ListHandler]]:
    logger = logging.getLogger("carinho.test_masking")
    handler = _ListHandler()
    handler.addFilter(MaskingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


def test_filter_masks_formatted_message_args(
    captured: tuple[logging.Logger, _ListHandler],
) -> None:
    logger, handler = captured
    logger.info("lead from %s <%s>", "+55 11 98765-4321", "ana@example.com")
    record = handler.records[0]
    assert record.getMessage() == "lead from +55*******4321 <a***@example.com>"
    assert record.args is None
    assert handler.lines == ["lead from +55*******4321 <a***@example.com>"]


def test_filter_masks_extra_attributes(captured: tuple[logging.Logger, _ListHandler]) -> None:
    logger, handler = captured
    logger.info(
        "inbound",
        extra={
            "phone": "5511987654321",
            "payload": {"email": "ana@example.com", "text": "meu cpf 529.982.247-25"},
            "ids": ["ok", "ana@example.com"],
            "attempt": 3,
            "action": "claimed",
        },
    )
    record = handler.records[0]
    assert record.phone == "55*******4321"  # type: ignore[attr-defined]
    assert record.payload == {  # type: ignore[attr-defined]
        "email": "a***@example.com",
        "text": "meu cpf ***.***.***-25",
    }
    assert record.ids == ["ok", "a***@example.com"]  # type: ignore[attr-defined]
    assert record.attempt == 3  # type: ignore[attr-defined]
    assert record.action == "claimed"  # type: ignore[attr-defined]


def test_filter_masks_dict_messages(captured: tuple[logging.Logger, _ListHandler]) -> None:
    logger, handler = captured
    logger.info({"action": "lead", "phone": "+5511987654321"})
    assert handler.records[0].msg == {"action": "lead", "phone": "+55*******4321"}


def test_filter_masks_tracebacks(captured: tuple[logging.Logger, _ListHandler]) -> None:
    logger, handler = captured
    try:
        raise ValueError("cannot reach ana@example.com at 11 98765-4321")
    except ValueError:
        logger.exception("send failed")
    line = handler.lines[0]
    assert "ValueError: cannot reach a***@example.com at *******4321" in line
    assert "ana@example.com" not in line and "98765" not in line


def test_filter_survives_bad_format_args(captured: tuple[logging.Logger, _ListHandler]) -> None:
    logger, handler = captured
    logger.info("%d items for %s", "not-a-number", "ana@example.com")
    assert handler.records[0].getMessage() == (
        "%d items for %s ('not-a-number', 'a***@example.com')"
    )


def test_filter_works_with_json_formatter() -> None:
    from pythonjsonlogger.json import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("%(levelname)s %(message)s"))
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger("carinho.test_masking.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError("bad phone 5511987654321")
        except RuntimeError:
            logger.exception("for %s", "ana@example.com", extra={"telefone": "11987654321"})
    finally:
        logger.removeHandler(handler)
    out = json.loads(stream.getvalue())
    assert out["message"] == "for a***@example.com"
    assert out["telefone"] == "*******4321"
    assert "55*******4321" in out["exc_info"]
    assert "5511987654321" not in stream.getvalue()


_PHONE_RE = re.compile(r"\+55 \(([1-9]{2})\) (9[0-9]{4})-([0-9]{4})")


@given(
    ddd=st.from_regex(r"\A[1-9]{2}\Z"),
    middle=st.from_regex(r"\A9[0-9]{4}\Z"),
    last=st.from_regex(r"\A[0-9]{4}\Z"),
    before=st.text(alphabet=st.characters(categories=["L", "Zs"]), max_size=10),
    after=st.text(alphabet=st.characters(categories=["Zs"]), max_size=3),
)
def test_any_embedded_phone_keeps_only_last_four(
    ddd: str, middle: str, last: str, before: str, after: str
) -> None:
    text = f"{before} +55 ({ddd}) {middle}-{last}{after}"
    masked = mask_text(text)
    assert masked == f"{before} +55*******{last}{after}"


@given(st.text(max_size=200))
def test_mask_text_never_raises_and_never_grows_digits(text: str) -> None:
    masked = mask_text(text)
    assert sum(c.isdigit() for c in masked) <= sum(c.isdigit() for c in text)
    assert mask_text(masked) == masked
