"""API keys: random, shown once, stored as a SHA-256 hash.

Keys carry 192 bits of randomness, so a fast hash is enough (no password stretching needed) and
lets the lookup be one indexed equality.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "co_"


def generate() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:8]


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
