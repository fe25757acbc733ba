"""LGPD masking of personal data (phones, e-mails, CPFs) before anything reaches a log.

Runs on every log line, so there is one compiled alternation scanned once per string and a
fast path for strings that cannot contain any of the patterns. Masking is idempotent: masked
output contains ``*`` where the digits were, so it never matches again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MaskingFilter", "mask_text", "mask_value"]

_MASK = "*"
_KEEP_PHONE_DIGITS = 4
_MAX_DEPTH = 32  # beyond this a structure is not a log payload; replace rather than recurse

# A phone is only recognised when it has a phone's shape, so timestamps, amounts and ids in log
# lines stay readable. Separators allowed inside a number: space, dot, dash.
_PHONE_PATTERNS = (
    r"\+\s?55[\s.-]?\(?0?[1-9]{2}\)?[\s.-]?9?[0-9]{4}[\s.-]?[0-9]{4}",  # +55 (11) 98765-4321
    r"\+[1-9][0-9]{7,14}",  # any other E.164, e.g. a foreign WhatsApp contact
    r"55[1-9]{2}9?[0-9]{8}",  # Z-API style: 5511987654321 / 554199999999
    r"\(0?[1-9]{2}\)[\s.-]?9?[0-9]{4}[\s.-]?[0-9]{4}",  # (11) 98765-4321
    r"[1-9]{2}[\s.-]9?[0-9]{4}[\s.-]?[0-9]{4}",  # 11 98765-4321
    r"[1-9]{2}9[0-9]{4}-[0-9]{4}",  # 1198765-4321
    # 98765-4321 (mobile, no area code). The 4-4 landline form is left alone: it is
    # indistinguishable from a year range such as 2023-2024.
    r"9[0-9]{4}-[0-9]{4}",
)

_PII_RE = re.compile(
    # Not glued to a word, a decimal or a hyphenated id (UUIDs contain long digit runs).
    r"(?<![\w.+\-@])(?:"
    # \w, not [a-z0-9]: "joão@x.com" must be masked whole, not from the "o" after the "ã".
    r"(?P<email>[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)+)"
    r"|(?P<cpf>[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}|[0-9]{9}-[0-9]{2})"
    r"|(?P<lid>[0-9]{6,20}@lid)"
    r"|(?P<bare11>[0-9]{11})"
    r"|(?P<phone>" + "|".join(_PHONE_PATTERNS) + r")"
    r")(?![\w@])",
    re.IGNORECASE,
)

_CANDIDATE_RE = re.compile(r"@|[0-9]{3}")

_SENSITIVE_KEY_RE = re.compile(r"phone|telefone|celular|whatsapp_?number|e_?-?mail|cpf", re.I)
_EMAIL_KEY_RE = re.compile(r"e_?-?mail", re.I)
_CPF_KEY_RE = re.compile(r"cpf", re.I)
_NON_DIGITS_RE = re.compile(r"[^0-9]")


def _cpf_is_valid(digits: str) -> bool:
    # Check digits tell a bare 11-digit CPF apart from a mobile number (DD9XXXXXXXX).
    if len(digits) != 11 or digits == digits[0] * 11:
        return False
    nums = [int(c) for c in digits]
    for size in (9, 10):
        total = sum(n * w for n, w in zip(nums[:size], range(size + 1, 1, -1), strict=True))
        check = (total * 10) % 11 % 10
        if check != nums[size]:
            return False
    return True


def _mask_phone_digits(digits: str, plus: bool) -> str:
    keep = digits[-_KEEP_PHONE_DIGITS:]
    if len(digits) <= _KEEP_PHONE_DIGITS:
        return _MASK * len(digits)
    # The country code is not personal and tells an operator which market the contact is in.
    country = "55" if digits.startswith("55") and len(digits) in (12, 13) else ""
    hidden = len(digits) - len(country) - len(keep)
    return ("+" if plus else "") + country + _MASK * hidden + keep


def _mask_email(email: str) -> str:
    local, _, domain = email.rpartition("@")
    if not local:
        return _MASK * 3
    return f"{local[0]}{_MASK * 3}@{domain}"


def _mask_cpf(digits: str) -> str:
    return f"***.***.***-{digits[-2:]}" if len(digits) == 11 else _MASK * 3


def _replace(match: re.Match[str]) -> str:
    kind = match.lastgroup
    text = match.group(0)
    if kind == "email":
        return _mask_email(text)
    if kind == "cpf":
        return _mask_cpf(_NON_DIGITS_RE.sub("", text))
    if kind == "lid":
        digits = text[: -len("@lid")]
        return _MASK * (len(digits) - _KEEP_PHONE_DIGITS) + digits[-_KEEP_PHONE_DIGITS:] + "@lid"
    if kind == "bare11":
        if _cpf_is_valid(text):
            return _mask_cpf(text)
        if text[0] != "0" and text[1] != "0" and text[2] == "9":
            return _mask_phone_digits(text, plus=False)
        return text
    return _mask_phone_digits(_NON_DIGITS_RE.sub("", text), plus=text.startswith("+"))


def mask_text(s: str) -> str:
    """Mask every phone number, e-mail address, CPF and WhatsApp ``@lid`` id inside ``s``."""
    # Fast path: every pattern needs an "@" or three digits in a row, and most log lines
    # have neither; one C-level search is far cheaper than the full alternation.
    if _CANDIDATE_RE.search(s) is None:
        return s
    return _PII_RE.sub(_replace, s)


def _mask_whole(key: str, value: Any) -> Any:
    """Mask a value stored under a key that names personal data, whatever its shape."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Mapping | list | tuple):
        return _mask_any(value, 1, force_key=key)
    text = str(value)
    if _EMAIL_KEY_RE.search(key):
        return _mask_email(text) if "@" in text else _MASK * 3
    digits = _NON_DIGITS_RE.sub("", text)
    if _CPF_KEY_RE.search(key):
        return _mask_cpf(digits)
    if text.endswith("@lid"):
        return mask_text(text)
    if len(digits) < 6:
        return _MASK * 3
    return _mask_phone_digits(digits, plus=text.lstrip().startswith("+"))


def _mask_any(obj: Any, depth: int, force_key: str | None = None) -> Any:
    if depth > _MAX_DEPTH:
        return "<too deep>"
    if isinstance(obj, str):
        return _mask_whole(force_key, obj) if force_key else mask_text(obj)
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            skey = key if isinstance(key, str) else str(key)
            if force_key is None and _SENSITIVE_KEY_RE.search(skey):
                out[key] = _mask_whole(skey, value)
            else:
                out[key] = _mask_any(value, depth + 1, force_key)
        return out
    if isinstance(obj, list | tuple):
        masked = [_mask_any(item, depth + 1, force_key) for item in obj]
        return masked if isinstance(obj, list) else tuple(masked)
    if force_key is not None and isinstance(obj, int | float) and not isinstance(obj, bool):
        return _mask_whole(force_key, obj)
    return obj


def mask_value(obj: Any) -> Any:
    """Return a copy of ``obj`` with personal data masked.

    Strings are scanned with :func:`mask_text`; values under keys named like phone, telefone,
    celular, email or cpf are masked whole (including numbers and nested lists), because a
    value's key is a surer sign than its shape. Other types are returned unchanged.
    """
    return _mask_any(obj, 0)


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}


class MaskingFilter(logging.Filter):
    """Mask personal data in a record's message, ``extra=`` attributes and traceback text.

    Attach it to *handlers*: a filter on a logger does not see records propagated from child
    loggers. The message is formatted with its args first (a phone can arrive as an arg), then
    masked; ``args`` is cleared so formatters do not apply them twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, Mapping) and not record.args:
            # Structured loggers (python-json-logger) merge a dict msg into the JSON output.
            record.msg = mask_value(record.msg)
        else:
            try:
                message = record.getMessage()
            except Exception:
                # A bad format string is logging's error to report, not ours to hide; still
                # mask what we can so the raw args never reach the handler unmasked.
                message = f"{record.msg} {record.args!r}"
            record.msg = mask_text(message)
            record.args = None
        for name, value in list(vars(record).items()):
            if name in _STANDARD_RECORD_ATTRS or name.startswith("_"):
                continue
            if _SENSITIVE_KEY_RE.search(name):
                setattr(record, name, _mask_whole(name, value))
            elif isinstance(value, str | Mapping | list | tuple):
                setattr(record, name, mask_value(value))
        if record.exc_info:
            # Render the traceback here, masked, and drop exc_info: logging.Formatter prints
            # exc_text when set, but python-json-logger re-renders exc_info whenever present.
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True
