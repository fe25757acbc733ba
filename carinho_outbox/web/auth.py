"""API-key authentication with a short in-process cache.

The cache keeps the hot path at zero extra queries for a busy client; revocation and expiry
take effect within AUTH_CACHE_S (default 5 s). The lookup also stamps last_used_at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request

from ..keys import hash_key
from ..store import Store
from .errors import ApiError


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    sources: tuple[str, ...]
    is_admin: bool
    rate_per_s: float | None = None
    burst: int | None = None


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


class Authenticator:
    def __init__(self, store: Store, cache_s: float) -> None:
        self.store = store
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal | None, str]] = {}

    async def authenticate(self, request: Request) -> Principal:
        key = presented_key(request)
        if not key:
            raise ApiError(
                401,
                "unauthorized",
                "missing API key (Authorization: Bearer … or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[0] < now:
            principal, problem = await self._lookup(digest)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_s, principal, problem)
        else:
            _, principal, problem = cached
        if principal is None:
            raise ApiError(401, "unauthorized", problem, headers={"WWW-Authenticate": "Bearer"})
        return principal

    async def _lookup(self, digest: str) -> tuple[Principal | None, str]:
        row = await self.store.auth_key(key_hash=digest)
        if row is None:
            return None, "invalid API key"
        if row["revoked_at"] is not None:
            return None, "API key revoked"
        if row["expires_at"] is not None and row["expires_at"] <= datetime.now(UTC):
            return None, "API key expired"
        return (
            Principal(
                name=row["name"],
                sources=tuple(row["sources"]),
                is_admin=row["is_admin"],
                rate_per_s=row["rate_per_s"],
                burst=row["burst"],
            ),
            "",
        )

    async def admin(self, request: Request) -> Principal:
        principal = await self.authenticate(request)
        if not principal.is_admin:
            raise ApiError(403, "forbidden", "this endpoint needs an admin key")
        return principal
