"""Per-client rate limits: token buckets shared by every web process through Postgres.

One short statement per checked request (`take_token`: INSERT … ON CONFLICT DO UPDATE …
RETURNING on an unlogged table), so N processes enforce one limit and a restart forgets
nothing that matters. Refused requests get 429 with `Retry-After` and the `RateLimit-*` headers
of the IETF draft (draft-ietf-httpapi-ratelimit-headers); accepted ones get the `RateLimit-*`
headers too, so a client can pace itself before it is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from starlette.requests import Request

from ..settings import Settings
from ..store import Store
from .auth import Principal
from .errors import ApiError


@dataclass(frozen=True, slots=True)
class Quota:
    rate_per_s: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0 and self.burst > 0


def key_quota(principal: Principal, settings: Settings) -> Quota:
    """The key's own rate and burst where set (0 switches the limit off for that key)."""
    rate = settings.rate_limit_per_s if principal.rate_per_s is None else principal.rate_per_s
    burst = settings.rate_limit_burst if principal.burst is None else principal.burst
    return Quota(rate, burst)


def rate_headers(quota: Quota, allowed: bool, level: float) -> dict[str, str]:
    """Headers for a bucket that has `level` tokens left after this request.

    RateLimit-Reset is the seconds until the bucket is full again; Retry-After (refusals only)
    the seconds until one token is back. Both rounded up: a client that waits that long is
    never refused for having come back a fraction too early.
    """
    level = max(0.0, min(float(quota.burst), level))
    headers = {
        "RateLimit-Limit": str(quota.burst),
        "RateLimit-Remaining": str(math.floor(level)),
        "RateLimit-Reset": str(math.ceil((quota.burst - level) / quota.rate_per_s)),
        "RateLimit-Policy": f"{quota.burst};w={math.ceil(quota.burst / quota.rate_per_s)}",
    }
    if not allowed:
        headers["Retry-After"] = str(max(1, math.ceil((1.0 - level) / quota.rate_per_s)))
    return headers


def client_address(request: Request) -> str:
    # Behind a reverse proxy, uvicorn rewrites this from X-Forwarded-For for the proxies listed
    # in FORWARDED_ALLOW_IPS; the header is never trusted from anyone else.
    return request.client.host if request.client else "unknown"


class RateLimiter:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def check(self, request: Request, bucket: str, quota: Quota) -> None:
        """Take a token or raise 429; the RateLimit-* headers go on whatever is answered."""
        if not quota.enabled:
            return
        allowed, level = await self.store.take_token(
            bucket=bucket, rate_per_s=quota.rate_per_s, burst=quota.burst
        )
        headers = rate_headers(quota, allowed, level)
        if not allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit exceeded: {quota.burst} requests, refilled at {quota.rate_per_s:g}/s",
                headers=headers,
            )
        request.scope.setdefault("state", {})["response_headers"] = headers

    async def for_key(self, request: Request, principal: Principal) -> None:
        await self.check(request, f"key:{principal.name}", key_quota(principal, self.settings))

    async def for_address(self, request: Request, webhook: str, quota: Quota) -> None:
        await self.check(request, f"ip:{webhook}:{client_address(request)}", quota)

    def site_quota(self) -> Quota:
        return Quota(self.settings.rate_limit_ip_per_s, self.settings.rate_limit_ip_burst)

    def whatsapp_quota(self) -> Quota:
        return Quota(
            self.settings.rate_limit_whatsapp_ip_per_s, self.settings.rate_limit_whatsapp_ip_burst
        )
