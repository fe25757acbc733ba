"""Signed session cookies and CSRF tokens for the dashboard (HMAC-SHA256, stdlib only).

The cookie carries the admin key's hash (never the key), an expiry and a random session id,
signed with SESSION_SECRET. Every request re-checks the key in the database, so revoking the
key ends its sessions. The CSRF token is an HMAC of the session id: forms carry it, and a POST
without the matching token is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

COOKIE = "carinho_session"


@dataclass(frozen=True, slots=True)
class Session:
    key_hash: str
    name: str
    expires: float
    sid: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: bytes | None) -> None:
        # Unset: random per process, so sessions end with the process (documented).
        self.secret = secret or secrets.token_bytes(32)

    def _mac(self, data: bytes) -> str:
        return _b64(hmac.new(self.secret, data, hashlib.sha256).digest())

    def issue(self, *, key_hash: str, name: str, ttl_s: float) -> str:
        doc = {"h": key_hash, "n": name, "e": int(time.time() + ttl_s), "s": secrets.token_hex(8)}
        payload = _b64(json.dumps(doc, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload.encode())}"

    def read(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 1 or len(cookie) > 1024:
            return None
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac(payload.encode())):
            return None
        try:
            doc: dict[str, Any] = json.loads(_unb64(payload))
            session = Session(str(doc["h"]), str(doc["n"]), float(doc["e"]), str(doc["s"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def csrf(self, session: Session) -> str:
        return self._mac(f"csrf:{session.sid}".encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(session))
