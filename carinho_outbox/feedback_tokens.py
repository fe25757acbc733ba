"""Signed, expiring feedback links: `/feedback/<token>`, verified without the database.

A token is ``<base64url JSON {"s": service_id, "t": issued unix s}>.<base64url HMAC-SHA256>``
(the itsdangerous shape, without the dependency). The HMAC key is derived from FEEDBACK_SECRET
with a purpose label, so the same secret used elsewhere can never validate a feedback token.
Expiry is checked here; single use is the database's job (feedback_requests.answered_at).
Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

PURPOSE = b"carinho.feedback.v1"
# A token "issued" this far in the future (clock skew between processes) is still accepted.
FUTURE_SKEW_S = 300
MAX_TOKEN_LEN = 1024


class TokenError(ValueError):
    """``reason`` is 'invalid' (tampered, malformed, other secret) or 'expired'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FeedbackToken:
    service_id: str
    issued_at: int


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), PURPOSE, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(_key(secret), body.encode("ascii"), hashlib.sha256).digest())


def make_token(secret: str, service_id: str, issued_at: int) -> str:
    body = _b64(json.dumps({"s": service_id, "t": issued_at}, separators=(",", ":")).encode())
    return f"{body}.{_sign(secret, body)}"


def read_token(secret: str, token: str, *, ttl_s: int, now: float) -> FeedbackToken:
    if not token or len(token) > MAX_TOKEN_LEN or token.count(".") != 1:
        raise TokenError("invalid")
    body, signature = token.split(".")
    try:
        expected = _sign(secret, body)
    except UnicodeEncodeError:
        raise TokenError("invalid") from None
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
        raise TokenError("invalid")
    try:
        doc = json.loads(_unb64(body))
    except (binascii.Error, ValueError):
        raise TokenError("invalid") from None
    service_id, issued = (doc.get("s"), doc.get("t")) if isinstance(doc, dict) else (None, None)
    if not isinstance(service_id, str) or not isinstance(issued, int) or isinstance(issued, bool):
        raise TokenError("invalid")
    if issued > now + FUTURE_SKEW_S:
        raise TokenError("invalid")
    if now - issued > ttl_s:
        raise TokenError("expired")
    return FeedbackToken(service_id=service_id, issued_at=issued)
