"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
"{id}.{timestamp}.{body}", base64, sent as `v1,<sig>` (space-separated when several)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

SIGNATURE_TOLERANCE_S = 300


class SignatureError(Exception):
    """Why a signature did not verify (safe to show: it never contains the secret)."""


def _key(secret: str) -> bytes:
    # Standard Webhooks secrets are often given as "whsec_<base64>"; plain strings work too.
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except ValueError:
            pass
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    return Signer(secret).sign(msg_id, timestamp, body)


class Signer:
    """One secret's signer: the key is decoded once and the HMAC state keyed once, so each
    signature is a copy of that state plus the message (the worker signs every delivery)."""

    __slots__ = ("_base",)

    def __init__(self, secret: str) -> None:
        self._base = hmac.new(_key(secret), digestmod=hashlib.sha256)

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        mac = self._base.copy()
        mac.update(f"{msg_id}.{timestamp}.".encode())
        mac.update(body)
        return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def headers(
    secret: str | None, msg_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    out = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secret:
        out["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    return out


def verify(
    secret: str,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> None:
    """Raise SignatureError unless one of the v1 signatures matches and the time is fresh."""
    if not msg_id or not timestamp or not signature:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError("webhook-timestamp is outside the allowed window (replay?)")
    expected = sign(secret, msg_id, ts, body)
    for candidate in signature.split():
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise SignatureError("webhook-signature does not match")
