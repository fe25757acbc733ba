"""Brazilian phone and e-mail normalisation.

Everything the hub stores or compares uses E.164 (``+55DDNNNNNNNNN``) so that the same person
typed as ``(41) 9999-9999`` on the site, ``554199999999`` by Z-API and ``+55 41 99999-9999`` by
the CRM de-duplicates to one value. Pure functions: no I/O, safe to call on any input.
"""

from __future__ import annotations

import re

__all__ = [
    "BR_AREA_CODES",
    "EmailError",
    "PhoneError",
    "canonical_whatsapp_id",
    "normalize_br_phone",
    "normalize_email",
]


class PhoneError(ValueError):
    """The input is not a Brazilian phone number; ``str(exc)`` says why in plain English."""


class EmailError(ValueError):
    """The input is not a usable e-mail address; ``str(exc)`` says why in plain English."""


# The 67 DDDs in use (Anatel plan). Gaps such as 20, 23, 25, 26, 29, 30, 36, 39, 40, 50, 52,
# 56-60, 70, 72, 76, 78, 80, 90 were never assigned, so a number "in" them is a typo.
BR_AREA_CODES: frozenset[str] = frozenset(
    str(code)
    for code in (
        *range(11, 20),
        21, 22, 24, 27, 28,
        31, 32, 33, 34, 35, 37, 38,
        *range(41, 50),
        51, 53, 54, 55,
        *range(61, 70),
        71, 73, 74, 75, 77, 79,
        *range(81, 90),
        *range(91, 100),
    )
)  # fmt: skip

# Separators people and systems put in phone numbers; anything else is rejected rather than
# silently dropped, so "11 9999-9999 ramal 2" does not become a different valid number.
_SEPARATORS_RE = re.compile(r"[\s\-().\u00a0/]+")
# "0xx11", "0 xx 11", "0XX(11)": the written form of "0 + carrier code" in long-distance dialling.
_TRUNK_XX_RE = re.compile(r"^0xx", re.IGNORECASE)
_ASCII_DIGITS_RE = re.compile(r"^[0-9]+$")
_E164_BR_LEN = (10, 11)  # national significant number: DDD + 8 (landline) or 9 (mobile)
_MAX_INPUT_LEN = 64  # longer than any formatting of a phone; avoids work on garbage


def normalize_br_phone(raw: str) -> str:
    """Return ``raw`` as a Brazilian E.164 number (``+55`` + DDD + subscriber) or raise PhoneError.

    Accepts ``+55``/``55``/``0055`` country prefixes, a ``0`` trunk prefix with or without a
    carrier code (``0 21 11 ...``, ``0xx11 ...``), and spaces, dashes, dots and parentheses.
    Eight-digit numbers starting 6-9 are pre-2016 mobiles; the ninth digit is added.
    """
    if not isinstance(raw, str):
        raise PhoneError(f"phone must be text, not {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise PhoneError("phone number is empty")
    if len(text) > _MAX_INPUT_LEN:
        raise PhoneError("phone number is too long")

    has_plus = text.startswith("+")
    compact = _SEPARATORS_RE.sub("", text[1:] if has_plus else text)
    via_carrier_placeholder = False
    if _TRUNK_XX_RE.match(compact):
        compact = compact[3:]
        via_carrier_placeholder = True
    if not compact:
        raise PhoneError("phone number has no digits")
    # str.isdigit() and \d accept other scripts' digits (e.g. Arabic-Indic); a phone that a
    # carrier can dial only has ASCII digits.
    if not _ASCII_DIGITS_RE.match(compact):
        raise PhoneError("phone number contains characters other than digits and separators")

    national = _strip_prefixes(compact, has_plus=has_plus, after_xx=via_carrier_placeholder)
    return "+55" + _validate_national(national)


def _strip_prefixes(digits: str, *, has_plus: bool, after_xx: bool) -> str:
    """Remove country code / trunk / carrier prefixes, returning DDD + subscriber digits."""
    if after_xx:
        if has_plus:
            raise PhoneError("a '0xx' trunk prefix cannot follow '+'")
        return digits
    if has_plus:
        if not digits.startswith("55"):
            raise PhoneError("not a Brazilian number: the country code must be +55")
        digits = digits[2:]
        # "+55 (0) 11 ..." appears on business cards; the bracketed 0 is a trunk prefix.
        if digits.startswith("0") and len(digits) - 1 in _E164_BR_LEN:
            digits = digits[1:]
        return digits
    if digits.startswith("00"):
        # International prefix: "0055 ..." (European habit) or "00 <carrier> 55 ..." (dialled
        # from Brazil). No national number starts with 00.
        rest = digits[2:]
        if rest.startswith("55") and len(rest) - 2 in _E164_BR_LEN:
            return rest[2:]
        if rest[2:4] == "55" and len(rest) - 4 in _E164_BR_LEN:
            return rest[4:]
        raise PhoneError("not a Brazilian number: the country code after 00 must be 55")
    if digits.startswith("0"):
        rest = digits[1:]
        # No DDD starts with 0, so after the trunk 0 the length tells a carrier code apart:
        # 0 + DDD + number is 11/12 digits, 0 + carrier + DDD + number is 13/14.
        if len(rest) - 2 in _E164_BR_LEN:
            return rest[2:]
        return rest
    if digits.startswith("55") and len(digits) - 2 in _E164_BR_LEN:
        # Without "+" a leading 55 is the country code only when the rest is a full number:
        # "55 99999-9999" is DDD 55 (Santa Maria), "5555999999999" is +55 55 ...
        return digits[2:]
    return digits


def _validate_national(national: str) -> str:
    if len(national) < _E164_BR_LEN[0]:
        raise PhoneError(
            f"too few digits ({len(national)}): expected a 2-digit area code and an 8 or 9 "
            "digit number"
        )
    if len(national) > _E164_BR_LEN[1]:
        raise PhoneError(
            f"too many digits ({len(national)}): expected a 2-digit area code and an 8 or 9 "
            "digit number"
        )
    ddd, subscriber = national[:2], national[2:]
    if ddd not in BR_AREA_CODES:
        raise PhoneError(f"unknown area code {ddd}")
    first = subscriber[0]
    if len(subscriber) == 9:
        if first != "9":
            raise PhoneError("a 9-digit number must be a mobile starting with 9")
        return national
    if first in "6789":
        # Mobile dialled without the ninth digit (Z-API still reports many contacts this way).
        return ddd + "9" + subscriber
    if first in "2345":
        return national
    raise PhoneError(f"an 8-digit number cannot start with {first}")


_WA_SUFFIXES = ("@c.us", "@s.whatsapp.net")
# Ids that name something other than one person's phone: LID privacy ids, groups, channels,
# status broadcasts. Z-API also writes groups as "<digits>-group".
_WA_NON_PHONE_SUFFIXES = ("@lid", "@g.us", "@newsletter", "@broadcast", "-group")
_WA_DIGITS_RE = re.compile(r"^\+?[0-9]{8,15}$")


def canonical_whatsapp_id(raw: str) -> tuple[str, str | None]:
    """Split a Z-API/WhatsApp chat id into (the id as received, Brazilian E.164 or None).

    None means the id does not resolve to a Brazilian phone: an ``@lid`` privacy id, a group,
    a channel, a broadcast list, or a foreign number. The raw id is still worth storing so a
    later message can be tied to the same contact.
    """
    if not isinstance(raw, str):
        return (str(raw), None)
    candidate = raw.strip()
    lowered = candidate.lower()
    if lowered.endswith(_WA_NON_PHONE_SUFFIXES):
        return (raw, None)
    for suffix in _WA_SUFFIXES:
        if lowered.endswith(suffix):
            candidate = candidate[: -len(suffix)]
            # Multi-device ids look like "5511999999999:12@s.whatsapp.net".
            candidate = candidate.split(":", 1)[0]
            break
    if not _WA_DIGITS_RE.match(candidate):
        return (raw, None)
    digits = candidate.lstrip("+")
    # WhatsApp ids are always full international numbers; without this check a 10/11-digit
    # foreign id would be read as a Brazilian national number.
    if not digits.startswith("55") or len(digits) - 2 not in _E164_BR_LEN:
        return (raw, None)
    try:
        return (raw, normalize_br_phone("+" + digits))
    except PhoneError:
        return (raw, None)


_EMAIL_LOCAL_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_EMAIL_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_EMAIL_TLD_RE = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")


def normalize_email(raw: str) -> str:
    """Return ``raw`` stripped and lower-cased, or raise EmailError saying what is wrong.

    Deliberately stricter than RFC 5322 (no quoted local parts, no IP literals): those are
    valid but never typed into a lead form, and accepting them only lets typos through.
    """
    if not isinstance(raw, str):
        raise EmailError(f"e-mail must be text, not {type(raw).__name__}")
    email = raw.strip()
    if email.lower().startswith("mailto:"):
        email = email[len("mailto:") :]
    email = email.lower()
    if not email:
        raise EmailError("e-mail is empty")
    if len(email) > 254:
        raise EmailError("e-mail is longer than 254 characters")
    if any(ch.isspace() for ch in email):
        raise EmailError("e-mail contains spaces")
    if not email.isascii():
        raise EmailError("e-mail contains non-ASCII characters")
    if "@" not in email:
        raise EmailError("e-mail has no '@'")
    if email.count("@") > 1:
        raise EmailError("e-mail has more than one '@'")
    local, domain = email.split("@")
    if not local:
        raise EmailError("e-mail has nothing before the '@'")
    if len(local) > 64:
        raise EmailError("e-mail name part is longer than 64 characters")
    if not _EMAIL_LOCAL_RE.match(local):
        raise EmailError("e-mail name part has invalid characters or dots in the wrong place")
    if not domain:
        raise EmailError("e-mail has no domain after the '@'")
    labels = domain.split(".")
    if len(labels) < 2:
        raise EmailError(f"e-mail domain '{domain}' has no dot")
    if not all(_EMAIL_LABEL_RE.match(label) for label in labels):
        raise EmailError(f"e-mail domain '{domain}' is not a valid domain name")
    if not _EMAIL_TLD_RE.match(labels[-1]):
        raise EmailError(f"e-mail domain '{domain}' does not end in a valid top-level domain")
    return email
