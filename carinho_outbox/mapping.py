"""Versioned, declarative event mappings: payload in, destination-shaped ``data`` out.

Each (event type, destination) pair has a JSON spec stored in ``event_mappings``. A spec is
data, never code: a fixed list of rules and a fixed registry of formatters, so an operator can
edit it safely and ``render`` is pure. Purity matters because a delivery records only the
mapping version it used; re-rendering that version against the stored payload must reproduce
exactly what was sent (for audits, replays and ``mappings diff``).

Spec format (all keys optional except inside a rule)::

    {"mode": "merge",                      # or "only_listed"; default "merge"
     "fields": [
      {"to": "cliente.telefone", "from": "phone", "format": "phone_national"},
      {"to": "origem", "const": "carinho"},
      {"to": "valor", "from": "amount_cents", "format": "cents_to_decimal", "required": true},
      {"to": "nome", "from": "name", "default": "Sem nome", "format": "upper"},
      {"to": "tags", "from": ["utm_source", "utm_campaign"], "format": "join", "separator": ","},
      {"to": "dia", "from": "starts_at", "format": "date", "pattern": "DD/MM/YYYY", "tz": "-03:00"},
      {"to": "evento", "from": "@event.id"}
     ],
     "drop": ["internal_notes", "items.*.cost_cents"]}

Semantics:

- ``merge`` starts from a deep copy of the payload (so no rules = identity); ``only_listed``
  starts from ``{}``. Rules always *read* the original payload, never the output being built,
  so rule order cannot change what a rule sees.
- ``from``: dotted payload path (``items.0.id``; negative list indexes count from the end), a
  list of paths (values that are present and non-null are collected into a list, e.g. for
  ``join``), ``@event.id|type|source|occurred_at`` (event metadata) or ``@payload`` (the whole
  payload, to nest it under a key).
- A missing or null source uses ``default`` when given (the default is then formatted like a
  source value), else raises ``MappingError`` when ``required``, else writes nothing: in
  ``merge`` mode an existing payload key at ``to`` is then left as it was.
- ``to``: dotted output path; intermediate objects are created as needed.
- ``drop`` is applied last, so a dropped path is guaranteed absent from what leaves the hub
  (the point of ``drop`` is keeping internal data in). ``*`` matches every list item / key.
- ``format`` names one entry of ``FORMATS``; ``separator`` (join/split, default ","),
  ``pattern`` (date: tokens YYYY MM DD HH mm ss, 'quoted' literals) and ``tz`` (date,
  iso_date, unix_seconds: "UTC" or a fixed offset like "-03:00") are its only arguments.
  Money formatters refuse floats: amounts are integer cents or decimal strings.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from .phones import PhoneError, normalize_br_phone

__all__ = [
    "FORMATS",
    "IDENTITY_SPEC",
    "MAX_FROM_PATHS",
    "MAX_PATH_DEPTH",
    "MAX_RULES",
    "MAX_SPEC_BYTES",
    "META_REFS",
    "FieldRule",
    "MappingError",
    "MappingSpec",
    "MappingSpecError",
    "diff_specs",
    "dump_spec",
    "parse_spec",
    "render",
]

# Limits keep a hand-edited spec from becoming a denial of service for every delivery it renders.
MAX_RULES: Final = 200
MAX_DROP: Final = 200
MAX_PATH_DEPTH: Final = 10
MAX_PATH_CHARS: Final = 200
MAX_FROM_PATHS: Final = 20
MAX_PATTERN_CHARS: Final = 64
MAX_SPEC_BYTES: Final = 64 * 1024
# Parsing numbers from strings is only ever done on short inputs: int("9" * 10**6) is quadratic.
_MAX_NUMBER_CHARS: Final = 40
_MAX_PHONE_CHARS: Final = 40

META_REFS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "@event.id": "id",
        "@event.type": "type",
        "@event.source": "source",
        "@event.occurred_at": "occurred_at",
    }
)
_PAYLOAD_REF: Final = "@payload"
_WILDCARD: Final = "*"


class MappingSpecError(ValueError):
    """A spec is invalid; raised when it is loaded, so a bad spec is never saved or used."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class MappingError(Exception):
    """A valid spec could not be applied to this payload (the delivery cannot be rendered)."""

    def __init__(self, message: str, *, rule_index: int | None = None, to: str | None = None):
        self.rule_index = rule_index
        self.to = to
        super().__init__(message)


class _FormatError(ValueError):
    """Raised by formatters; ``render`` re-raises it as MappingError naming the rule."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


# --------------------------------------------------------------------------- spec models


class FieldRule(BaseModel):
    """One output key. Exactly one of ``from`` / ``const``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    to: str
    from_: str | tuple[str, ...] | None = Field(default=None, alias="from")
    # const/default use model_fields_set, so an explicit JSON null is a real value, not "unset".
    const: JsonValue = None
    default: JsonValue = None
    required: bool = False
    format: str | None = None
    separator: str | None = None
    pattern: str | None = None
    tz: str | None = None

    @property
    def has_const(self) -> bool:
        return "const" in self.model_fields_set

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set

    @model_validator(mode="after")
    def _validate(self) -> FieldRule:
        problem = _rule_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


class MappingSpec(BaseModel):
    """A whole mapping for one (event type, destination, version)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["merge", "only_listed"] = "merge"
    fields: tuple[FieldRule, ...] = ()
    drop: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _validate(self) -> MappingSpec:
        problems = _spec_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --------------------------------------------------------------------------- paths


@lru_cache(maxsize=4096)
def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _is_index(segment: str) -> bool:
    return re.fullmatch(r"-?[0-9]+", segment) is not None


def _path_problem(
    path: str, what: str, *, output: bool = False, wildcard: bool = False
) -> str | None:
    if not path:
        return f"{what} path is empty"
    if len(path) > MAX_PATH_CHARS:
        return f"{what} path is longer than {MAX_PATH_CHARS} characters"
    segments = _segments(path)
    if any(s == "" for s in segments):
        return f"bad {what} path {path!r}: empty segment"
    if len(segments) > MAX_PATH_DEPTH:
        return f"bad {what} path {path!r}: deeper than {MAX_PATH_DEPTH} segments"
    if not wildcard and _WILDCARD in segments:
        return f"bad {what} path {path!r}: '*' is only allowed in drop"
    if output and any(_is_index(s) for s in segments):
        # Output paths only create objects; a numeric key would silently become {"0": ...}.
        return f"bad {what} path {path!r}: numeric segments are not allowed in output paths"
    return None


def _source_problem(ref: str) -> str | None:
    if ref.startswith("@"):
        if ref == _PAYLOAD_REF or ref in META_REFS:
            return None
        known = ", ".join([*META_REFS, _PAYLOAD_REF])
        return f"unknown reference {ref!r}; known: {known}"
    return _path_problem(ref, "'from'")


def _resolve(root: Any, segments: tuple[str, ...]) -> Any:
    cur = root
    for seg in segments:
        if isinstance(cur, dict):
            if seg not in cur:
                return _MISSING
            cur = cur[seg]
        elif isinstance(cur, list) and _is_index(seg):
            idx = int(seg)
            if not -len(cur) <= idx < len(cur):
                return _MISSING
            cur = cur[idx]
        else:
            return _MISSING
    return cur


def _assign(out: dict[str, Any], segments: tuple[str, ...], value: Any, where: str) -> None:
    cur = out
    for depth, seg in enumerate(segments[:-1]):
        nxt = cur.get(seg, _MISSING)
        if nxt is _MISSING:
            nxt = {}
            cur[seg] = nxt
        elif not isinstance(nxt, dict):
            # Replacing a payload value with an object would silently lose data: refuse.
            blocker = ".".join(segments[: depth + 1])
            raise MappingError(
                f"{where}: cannot write inside {blocker!r}, it holds {_kind(nxt)}, not an object"
            )
        cur = nxt
    cur[segments[-1]] = value


def _remove(node: Any, segments: tuple[str, ...]) -> None:
    if not segments:
        return
    head, rest = segments[0], segments[1:]
    if isinstance(node, dict):
        keys = list(node) if head == _WILDCARD else [head]
        for key in keys:
            if key not in node:
                continue
            if rest:
                _remove(node[key], rest)
            else:
                del node[key]
    elif isinstance(node, list) and rest:
        # drop removes object keys only; deleting list items would shift every later index.
        if head == _WILDCARD:
            for item in node:
                _remove(item, rest)
        elif _is_index(head) and -len(node) <= int(head) < len(node):
            _remove(node[int(head)], rest)


def _covers(drop: tuple[str, ...], to: tuple[str, ...]) -> bool:
    return len(drop) <= len(to) and all(d in (_WILDCARD, t) for d, t in zip(drop, to, strict=False))


# --------------------------------------------------------------------------- formatters

Formatter = Callable[[Any, FieldRule], Any]


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_phone(value: Any) -> tuple[str, bool]:
    """International digits (no '+') and whether the number is Brazilian."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _FormatError(f"expected a phone number, got {_kind(value)}")
    text = str(value).strip()
    if len(text) > _MAX_PHONE_CHARS:
        raise _FormatError("phone number is too long")
    if text.startswith("+") and not re.sub(r"[^0-9]", "", text).startswith("55"):
        # Explicitly international and not Brazilian: pass through (E.164 allows up to 15
        # digits) rather than guess; phone_national refuses these.
        digits = re.sub(r"[^0-9]", "", text)
        if re.fullmatch(r"\+[0-9][0-9 ().\-]*", text) is None or not 8 <= len(digits) <= 15:
            raise _FormatError(f"not a valid international phone number: {_short(value)}")
        return digits, False
    try:
        # Same rules as ingress (area codes, trunk/carrier prefixes, the ninth digit), so a
        # number accepted when the event arrived always formats when it is delivered.
        return normalize_br_phone(text)[1:], True
    except PhoneError as exc:
        raise _FormatError(f"not a valid Brazilian phone number ({exc}): {_short(value)}") from exc


def _fmt_phone_e164(value: Any, rule: FieldRule) -> str:
    digits, _ = _parse_phone(value)
    return "+" + digits


def _fmt_phone_digits(value: Any, rule: FieldRule) -> str:
    # A string, not a JSON number: Z-API and most CRMs take phones as strings.
    digits, _ = _parse_phone(value)
    return digits


def _fmt_phone_national(value: Any, rule: FieldRule) -> str:
    digits, brazilian = _parse_phone(value)
    if not brazilian:
        raise _FormatError(f"not a Brazilian number, no national format: {_short(value)}")
    ddd, number = digits[2:4], digits[4:]
    split = 5 if len(number) == 9 else 4
    return f"({ddd}) {number[:split]}-{number[split:]}"


def _strict_int(value: Any, what: str) -> int:
    """An exact integer; floats are refused so money never passes through binary floating point."""
    if isinstance(value, bool):
        raise _FormatError(f"expected {what}, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= _MAX_NUMBER_CHARS and re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
        raise _FormatError(f"expected {what}, got {_short(value)}")
    raise _FormatError(f"expected {what}, got {_kind(value)}")


def _fmt_cents_to_decimal(value: Any, rule: FieldRule) -> str:
    cents = _strict_int(value, "integer cents")
    units, rest = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{units}.{rest:02d}"


def _fmt_decimal_to_cents(value: Any, rule: FieldRule) -> int:
    if isinstance(value, bool | float):
        raise _FormatError(f"expected a decimal string, got {_kind(value)} (floats are not money)")
    if isinstance(value, int):
        return value * 100
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _FormatError(f"not a finite amount: {_short(value)}")
        text = format(value, "f")  # exact; Decimal arithmetic would round to 28 digits
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise _FormatError(f"expected a decimal string, got {_kind(value)}")
    match = re.fullmatch(r"([+-]?)([0-9]+)(?:\.([0-9]+))?", text)
    if len(text) > _MAX_NUMBER_CHARS or match is None:
        raise _FormatError(f"expected a decimal like '1234.56', got {_short(value)}")
    sign, units, fraction = match[1], match[2], (match[3] or "").rstrip("0")
    if len(fraction) > 2:
        raise _FormatError(f"more than 2 decimal places: {_short(value)}")
    cents = int(units) * 100 + int(fraction.ljust(2, "0"))
    return -cents if sign == "-" else cents


def _parse_tz(text: str) -> tzinfo | None:
    if text in ("UTC", "Z"):
        return UTC
    match = re.fullmatch(r"([+-])([0-9]{2}):([0-9]{2})", text)
    if match is None:
        return None
    hours, minutes = int(match[2]), int(match[3])
    if hours > 23 or minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if match[1] == "-" else offset)


def _parse_instant(value: Any) -> datetime:
    try:
        if isinstance(value, datetime):
            return value
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day)
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, tz=UTC)  # integers are unix seconds
        if isinstance(value, str) and len(value) <= 64:
            return datetime.fromisoformat(value.strip())
    except (ValueError, OverflowError, OSError) as exc:
        raise _FormatError(f"not an ISO 8601 date/time: {_short(value)}") from exc
    raise _FormatError(f"expected an ISO 8601 date/time, got {_kind(value)}")


def _localize(dt: datetime, rule: FieldRule) -> datetime:
    """Convert aware values to the rule's ``tz``; naive values are taken to be in it already."""
    if rule.tz is None or dt.tzinfo is None:
        return dt
    zone = _parse_tz(rule.tz)
    if zone is None:  # unreachable for validated specs; never fall back to the host's zone
        raise _FormatError(f"bad tz {rule.tz!r}")
    try:
        return dt.astimezone(zone)
    except OverflowError as exc:
        raise _FormatError(f"date out of range after converting to {rule.tz}") from exc


_DATE_TOKENS: Final = ("YYYY", "MM", "DD", "HH", "mm", "ss")


@lru_cache(maxsize=256)
def _compile_date_pattern(pattern: str) -> tuple[tuple[bool, str], ...]:
    """(is_token, text) pieces. Letters must form whitelisted tokens; quote literal words."""
    pieces: list[tuple[bool, str]] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "'":
            end = pattern.find("'", i + 1)
            if end < 0:
                raise ValueError(f"unterminated quote at position {i} in date pattern {pattern!r}")
            pieces.append((False, pattern[i + 1 : end]))
            i = end + 1
            continue
        if ch.isalpha():
            token = next((t for t in _DATE_TOKENS if pattern.startswith(t, i)), None)
            if token is None:
                run = re.match(r"[^\W\d_]+", pattern[i:])
                bad = run.group(0) if run else ch
                raise ValueError(
                    f"unknown token {bad!r} in date pattern {pattern!r}; "
                    f"tokens: {', '.join(_DATE_TOKENS)} (quote literal text: 'às')"
                )
            pieces.append((True, token))
            i += len(token)
            continue
        pieces.append((False, ch))
        i += 1
    return tuple(pieces)


def _fmt_date(value: Any, rule: FieldRule) -> str:
    dt = _localize(_parse_instant(value), rule)
    parts = {
        "YYYY": f"{dt.year:04d}",
        "MM": f"{dt.month:02d}",
        "DD": f"{dt.day:02d}",
        "HH": f"{dt.hour:02d}",
        "mm": f"{dt.minute:02d}",
        "ss": f"{dt.second:02d}",
    }
    pieces = _compile_date_pattern(rule.pattern or "")
    return "".join(parts[text] if is_token else text for is_token, text in pieces)


def _fmt_iso_date(value: Any, rule: FieldRule) -> str:
    return _localize(_parse_instant(value), rule).date().isoformat()


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _fmt_unix_seconds(value: Any, rule: FieldRule) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    dt = _parse_instant(value)
    if dt.tzinfo is None:
        # Guessing the machine's zone would make rendering depend on where it runs.
        zone = _parse_tz(rule.tz) if rule.tz else None
        if zone is None:
            raise _FormatError(
                f"timestamp has no UTC offset and the rule has no tz: {_short(value)}"
            )
        dt = dt.replace(tzinfo=zone)
    return (dt - _EPOCH) // timedelta(seconds=1)


def _require_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _FormatError(f"expected a string, got {_kind(value)}")
    return value


def _json_default(value: object) -> object:
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"  # JSON spelling, not Python's "True"
    try:
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise _FormatError(f"not a finite number: {value!r}")
            return repr(value)
        if isinstance(value, Decimal | UUID):
            return str(value)
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, dict | list | tuple):
            return json.dumps(
                value,
                sort_keys=True,
                ensure_ascii=False,
                separators=(",", ":"),
                allow_nan=False,
                default=_json_default,
            )
    except (ValueError, TypeError, RecursionError) as exc:
        raise _FormatError(f"cannot convert {_kind(value)} to text: {exc}") from exc
    raise _FormatError(f"cannot convert {_kind(value)} to text")


def _fmt_int(value: Any, rule: FieldRule) -> int:
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _FormatError(f"not a whole number: {value!r}")
    if isinstance(value, Decimal) and value.is_finite() and value != value.to_integral_value():
        raise _FormatError(f"not a whole number: {value}")
    return _strict_int(value, "an integer")


_TRUE_WORDS: Final = frozenset({"true", "1", "yes", "y", "sim", "s", "on"})
_FALSE_WORDS: Final = frozenset({"false", "0", "no", "n", "nao", "não", "off"})


def _fmt_bool(value: Any, rule: FieldRule) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _FormatError(f"not a boolean: {_short(value)}")


def _fmt_join(value: Any, rule: FieldRule) -> str:
    items = value if isinstance(value, list | tuple) else [value]
    parts = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, dict | list | tuple):
            raise _FormatError(f"join: cannot join {_kind(item)}")
        parts.append(_to_text(item))
    return (rule.separator if rule.separator is not None else ",").join(parts)


def _fmt_split(value: Any, rule: FieldRule) -> list[str]:
    separator = rule.separator if rule.separator is not None else ","
    # Trimmed and without empties: "a, b,,c" is how people type tag lists.
    return [part.strip() for part in _require_str(value).split(separator) if part.strip()]


FORMATS: Final[Mapping[str, Formatter]] = MappingProxyType(
    {
        "phone_e164": _fmt_phone_e164,
        "phone_national": _fmt_phone_national,
        "phone_digits": _fmt_phone_digits,
        "cents_to_decimal": _fmt_cents_to_decimal,
        "decimal_to_cents": _fmt_decimal_to_cents,
        "date": _fmt_date,
        "iso_date": _fmt_iso_date,
        "unix_seconds": _fmt_unix_seconds,
        "upper": lambda value, rule: _require_str(value).upper(),
        "lower": lambda value, rule: _require_str(value).lower(),
        "trim": lambda value, rule: _require_str(value).strip(),
        "string": lambda value, rule: _to_text(value),
        "int": _fmt_int,
        "bool": _fmt_bool,
        "join": _fmt_join,
        "split": _fmt_split,
    }
)

# Which optional formatter arguments each format accepts; anything else is a spec error.
_FORMAT_ARGS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "date": frozenset({"pattern", "tz"}),
        "iso_date": frozenset({"tz"}),
        "unix_seconds": frozenset({"tz"}),
        "join": frozenset({"separator"}),
        "split": frozenset({"separator"}),
    }
)


# --------------------------------------------------------------------------- validation


def _rule_label(index: int, to: object) -> str:
    return f"fields[{index}] (to={to!r})"


def _rule_problem(rule: FieldRule) -> str | None:
    """First problem of one rule in isolation, without the fields[i] prefix (added by caller)."""
    problem = _path_problem(rule.to, "'to'", output=True)
    if problem:
        return problem
    if rule.from_ is not None and rule.has_const:
        return "has both 'from' and 'const'; use exactly one"
    if rule.from_ is None and not rule.has_const:
        return "needs 'from' or 'const'"
    if rule.has_const:
        extras = [
            name
            for name in ("default", "format", "separator", "pattern", "tz")
            if name in rule.model_fields_set
        ]
        if rule.required:
            extras.append("required")
        if extras:
            return f"'const' cannot be combined with {', '.join(repr(e) for e in extras)}"
        return None
    sources = (rule.from_,) if isinstance(rule.from_, str) else rule.from_
    assert sources is not None
    if not sources:
        return "'from' list is empty"
    if len(sources) > MAX_FROM_PATHS:
        return f"'from' lists more than {MAX_FROM_PATHS} paths"
    for source in sources:
        problem = _source_problem(source)
        if problem:
            return problem
    if rule.required and rule.has_default:
        return "'required' and 'default' exclude each other (a default always satisfies it)"
    if rule.format is not None and rule.format not in FORMATS:
        return f"unknown format {rule.format!r}; known: {', '.join(FORMATS)}"
    if isinstance(rule.from_, tuple) and rule.format not in (None, "join"):
        return f"a list 'from' needs format 'join' or none, not {rule.format!r}"
    allowed = _FORMAT_ARGS.get(rule.format or "", frozenset())
    for arg in ("separator", "pattern", "tz"):
        if getattr(rule, arg) is not None and arg not in allowed:
            return f"{arg!r} does not apply to format {rule.format!r}"
    if rule.format == "date":
        if not rule.pattern:
            return "format 'date' needs a 'pattern', e.g. 'DD/MM/YYYY'"
        if len(rule.pattern) > MAX_PATTERN_CHARS:
            return f"date pattern is longer than {MAX_PATTERN_CHARS} characters"
        try:
            _compile_date_pattern(rule.pattern)
        except ValueError as exc:
            return str(exc)
    if rule.tz is not None and _parse_tz(rule.tz) is None:
        # Fixed offsets only: zone databases differ between machines and would break
        # reproducibility. Brazil has had no DST since 2019, so "-03:00" is Brasília time.
        return f"bad tz {rule.tz!r}; use 'UTC' or an offset like '-03:00'"
    if rule.separator is not None and rule.format == "split" and rule.separator == "":
        return "'split' needs a non-empty separator"
    if rule.has_default and rule.default is not None and rule.format is not None:
        try:
            FORMATS[rule.format](rule.default, rule)
        except _FormatError as exc:
            return f"default {_short(rule.default)} fails format {rule.format!r}: {exc}"
    return None


def _spec_problems(spec: MappingSpec) -> list[str]:
    problems: list[str] = []
    if len(spec.fields) > MAX_RULES:
        problems.append(f"too many rules: {len(spec.fields)} > {MAX_RULES}")
    if len(spec.drop) > MAX_DROP:
        problems.append(f"too many drop paths: {len(spec.drop)} > {MAX_DROP}")
    if problems:
        return problems
    drops: list[tuple[int, tuple[str, ...]]] = []
    for j, path in enumerate(spec.drop):
        problem = _path_problem(path, "drop", wildcard=True)
        if problem:
            problems.append(f"drop[{j}] ({path!r}): {problem}")
        else:
            drops.append((j, _segments(path)))
    exact: dict[tuple[str, ...], int] = {}
    prefixes: dict[tuple[str, ...], int] = {}
    for i, rule in enumerate(spec.fields):
        label = _rule_label(i, rule.to)
        segs = _segments(rule.to)
        # Two rules writing the same key, or one inside the other, would make the result
        # depend on rule order and silently discard one of them.
        other = exact.get(segs, prefixes.get(segs))
        if other is None:
            other = next((exact[segs[:k]] for k in range(1, len(segs)) if segs[:k] in exact), None)
        if other is not None:
            problems.append(f"{label}: collides with {_rule_label(other, spec.fields[other].to)}")
        exact.setdefault(segs, i)
        for k in range(1, len(segs)):
            prefixes.setdefault(segs[:k], i)
        for j, drop in drops:
            if _covers(drop, segs):
                problems.append(f"{label}: is removed by drop[{j}] ({spec.drop[j]!r})")
    return problems


def _format_validation_error(exc: ValidationError, raw: object) -> list[str]:
    raw_fields = raw.get("fields") if isinstance(raw, dict) else None
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        ctx = err.get("ctx") or {}
        if err["type"] == "value_error" and "error" in ctx:
            msg = str(ctx["error"])
        elif err["type"] == "extra_forbidden" and loc:
            msg = f"unknown key {loc.pop()!r}"
        else:
            # Specs are written as JSON, where tuples are lists.
            msg = err["msg"].replace("valid tuple", "valid list")
        prefix = ""
        if len(loc) >= 2 and loc[0] == "fields" and isinstance(loc[1], int):
            item = raw_fields[loc[1]] if isinstance(raw_fields, list | tuple) else None
            to = item.get("to") if isinstance(item, dict) else None
            prefix = _rule_label(loc[1], to)
            loc = loc[2:]
        elif len(loc) >= 2 and loc[0] == "drop" and isinstance(loc[1], int):
            prefix, loc = f"drop[{loc[1]}]", loc[2:]
        # Union members show up as extra loc parts ("str", "tuple[str, ...]"): noise for humans.
        field = next((str(p) for p in loc if p in FieldRule.model_fields or p == "from"), None)
        if field is None and loc and isinstance(loc[0], str) and loc[0] in MappingSpec.model_fields:
            field = loc[0]
        if field == "from_":
            field = "from"
        if field == "from" and err["type"] in ("string_type", "tuple_type"):
            msg = "must be a path string or a list of path strings"
        head = ": ".join(p for p in (prefix, field or "") if p)
        problem = f"{head}: {msg}" if head else msg
        if problem not in problems:
            problems.append(problem)
    return problems


# --------------------------------------------------------------------------- public API


def parse_spec(obj: object) -> MappingSpec:
    """Validate a spec (a dict, JSON text, or an already parsed MappingSpec)."""
    if isinstance(obj, MappingSpec):
        return obj
    if isinstance(obj, bytes | bytearray | str):
        if len(obj) > MAX_SPEC_BYTES:
            raise MappingSpecError(f"spec is larger than {MAX_SPEC_BYTES} bytes")
        try:
            obj = json.loads(obj)
        except ValueError as exc:
            raise MappingSpecError(f"spec is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MappingSpecError(f"spec must be a JSON object, got {_kind(obj)}")
    try:
        size = len(json.dumps(obj, ensure_ascii=False, default=_json_default))
    except (TypeError, ValueError, RecursionError) as exc:
        raise MappingSpecError(f"spec is not JSON data: {exc}") from exc
    if size > MAX_SPEC_BYTES:
        raise MappingSpecError(f"spec is larger than {MAX_SPEC_BYTES} bytes")
    try:
        return MappingSpec.model_validate(obj)
    except ValidationError as exc:
        raise MappingSpecError(_format_validation_error(exc, obj)) from exc


def _meta_value(value: Any) -> Any:
    # The worker may pass DB-typed metadata; output must be plain JSON either way.
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _copy(value: Any) -> Any:
    """copy.deepcopy for JSON-shaped data, which payloads are: a few times faster (no memo,
    no dispatch per atom), and the worker renders every delivery. Anything else falls back to
    deepcopy; like it, a too-deep value raises RecursionError."""
    kind = type(value)
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    return copy.deepcopy(value)


def _read(ref: str, payload: dict[str, Any], meta: Mapping[str, Any]) -> Any:
    if ref == _PAYLOAD_REF:
        return payload
    key = META_REFS.get(ref)
    if key is not None:
        value = meta.get(key, _MISSING)
        return _MISSING if value is _MISSING else _meta_value(value)
    return _resolve(payload, _segments(ref))


def _evaluate(rule: FieldRule, index: int, payload: dict[str, Any], meta: Mapping[str, Any]) -> Any:
    if rule.has_const:
        return copy.deepcopy(rule.const)
    if isinstance(rule.from_, tuple):
        found = [_read(ref, payload, meta) for ref in rule.from_]
        present = [v for v in found if v is not _MISSING and v is not None]
        value: Any = present if present else _MISSING
    else:
        value = _read(rule.from_ or "", payload, meta)
    if value is _MISSING or value is None:
        if rule.has_default:
            value = rule.default
        elif rule.required:
            raise MappingError(
                f"{_rule_label(index, rule.to)}: required source {_describe_from(rule)} "
                "is missing or null",
                rule_index=index,
                to=rule.to,
            )
        else:
            return _MISSING
        if value is None:
            return None
    if rule.format is None:
        return _copy(value)  # never alias the payload (or the spec) into the output
    try:
        return FORMATS[rule.format](value, rule)
    except _FormatError as exc:
        raise MappingError(
            f"{_rule_label(index, rule.to)}: format {rule.format!r} failed: {exc}",
            rule_index=index,
            to=rule.to,
        ) from exc


def _describe_from(rule: FieldRule) -> str:
    return repr(list(rule.from_)) if isinstance(rule.from_, tuple) else repr(rule.from_)


def render(spec: MappingSpec, payload: dict[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The destination's ``data``. Pure: no clock, no I/O, inputs are never mutated."""
    if not isinstance(payload, dict):
        raise MappingError(f"payload must be a JSON object, got {_kind(payload)}")
    try:
        out: dict[str, Any] = _copy(payload) if spec.mode == "merge" else {}
    except RecursionError as exc:
        raise MappingError("payload is nested too deeply") from exc
    for index, rule in enumerate(spec.fields):
        try:
            value = _evaluate(rule, index, payload, meta)
            if value is _MISSING:
                continue
            _assign(out, _segments(rule.to), value, _rule_label(index, rule.to))
        except MappingError as exc:
            exc.rule_index, exc.to = index, rule.to
            raise
        except RecursionError as exc:
            raise MappingError(
                f"{_rule_label(index, rule.to)}: value is nested too deeply",
                rule_index=index,
                to=rule.to,
            ) from exc
    for path in spec.drop:
        _remove(out, _segments(path))
    return out


def _dump_rule(rule: FieldRule) -> dict[str, Any]:
    out: dict[str, Any] = {"to": rule.to}
    if rule.from_ is not None:
        out["from"] = rule.from_ if isinstance(rule.from_, str) else list(rule.from_)
    if rule.has_const:
        out["const"] = rule.const
    if rule.has_default:
        out["default"] = rule.default
    if rule.required:
        out["required"] = True
    for name in ("format", "separator", "pattern", "tz"):
        value = getattr(rule, name)
        if value is not None:
            out[name] = value
    return out


def dump_spec(spec: MappingSpec) -> dict[str, Any]:
    """Canonical JSON form (stable key order, no defaulted keys): what to store in ``spec``."""
    return {
        "mode": spec.mode,
        "fields": [_dump_rule(rule) for rule in spec.fields],
        "drop": list(spec.drop),
    }


def _pretty_lines(spec: MappingSpec) -> list[str]:
    # One rule per line, so a diff shows which rules changed instead of scattered keys.
    def compact(value: object) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))

    data = dump_spec(spec)
    lines = ["{", f'  "mode": {compact(data["mode"])},', '  "fields": [']
    rules = data["fields"]
    lines += [f"    {compact(r)}{',' if i < len(rules) - 1 else ''}" for i, r in enumerate(rules)]
    lines += ["  ],", '  "drop": [']
    drops = data["drop"]
    lines += [f"    {compact(d)}{',' if i < len(drops) - 1 else ''}" for i, d in enumerate(drops)]
    lines += ["  ]", "}"]
    return lines


def diff_specs(
    old: MappingSpec, new: MappingSpec, *, old_label: str = "old", new_label: str = "new"
) -> list[str]:
    """Unified diff of the canonical forms; empty when the specs are equivalent."""
    return list(
        difflib.unified_diff(
            _pretty_lines(old),
            _pretty_lines(new),
            fromfile=old_label,
            tofile=new_label,
            lineterm="",
        )
    )


IDENTITY_SPEC: Final[MappingSpec] = MappingSpec(mode="merge", fields=(), drop=())
