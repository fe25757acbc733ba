"""Per-client rate limits: token buckets shared by every web process through Postgres.

One short statement per checked request (`take_token`: INSERT … ON CONFLICT DO UPDATE …
RETURNING on an unlogged table), so N processes enforce one limit and a restart forgets
nothing that matters. Refused requests get 429 with `Retry-After` and the `RateLimit-*` headers
of the IETF draft (draft-ietf-httpapi-ratelimit-headers); accepted ones get the `RateLimit-*`
headers too, so a client can pace itself before it is refused. A batch (POST /events/batch)
costs one token per event and two statements: a read-only look before its body is read, then
the take. Concurrent one-token takes on one bucket in one process are folded into one statement
(coalesce.py), so a busy key does not queue every request on its bucket's row lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from starlette.requests import Request

from ..coalesce import Coalescer
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


def rate_headers(quota: Quota, allowed: bool, level: float, need: float = 1.0) -> dict[str, str]:
    """Headers for a bucket that has `level` tokens left after this request.

    RateLimit-Reset is the seconds until the bucket is full again (a batch may have left it in
    debt, below 0); Retry-After (refusals only) the seconds until the `need` tokens the refused
    request asked for are back. Both rounded up: a client that waits that long is never refused
    for having come back a fraction too early.
    """
    level = min(float(quota.burst), level)
    headers = {
        "RateLimit-Limit": str(quota.burst),
        "RateLimit-Remaining": str(max(0, math.floor(level))),
        "RateLimit-Reset": str(math.ceil((quota.burst - level) / quota.rate_per_s)),
        "RateLimit-Policy": f"{quota.burst};w={math.ceil(quota.burst / quota.rate_per_s)}",
    }
    if not allowed:
        headers["Retry-After"] = str(max(1, math.ceil((need - level) / quota.rate_per_s)))
    return headers


def client_address(request: Request) -> str:
    # Behind a reverse proxy, uvicorn rewrites this from X-Forwarded-For for the proxies listed
    # in FORWARDED_ALLOW_IPS; the header is never trusted from anyone else.
    return request.client.host if request.client else "unknown"


TakeKey = tuple[str, float, int]


class RateLimiter:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        # One-token takes of concurrent requests on the same bucket go as one statement
        # (coalesce.py); a coalescer lives only while its bucket has takes queued or in flight.
        self._takes: dict[TakeKey, Coalescer[None, tuple[bool, float]]] = {}

    async def _take_one(self, key: TakeKey) -> tuple[bool, float]:
        bucket, rate, burst = key
        return await self.store.take_token(bucket=bucket, rate_per_s=rate, burst=burst)

    async def _take_many(self, key: TakeKey, count: int) -> list[tuple[bool, float]]:
        """`count` one-token requests: all allowed when the bucket holds `count`, else as many
        as it holds (a second statement), the rest refused; the answer each would have had one
        at a time, except that RateLimit-Remaining is what the group left."""
        bucket, rate, burst = key
        allowed, level = await self.store.take_token(
            bucket=bucket, rate_per_s=rate, burst=burst, cost=count, need=count
        )
        if allowed:
            return [(True, level)] * count
        fits = min(count, math.floor(level))
        if fits < 1:  # a refusal takes nothing, so `level` is what is there
            return [(False, level)] * count
        allowed, level = await self.store.take_token(
            bucket=bucket, rate_per_s=rate, burst=burst, cost=fits, need=fits
        )
        if allowed:
            return [(True, level)] * fits + [(False, level)] * (count - fits)
        # Another process took them in between: one at a time, exact.
        return [await self._take_one(key) for _ in range(count)]

    async def _take(self, bucket: str, quota: Quota) -> tuple[bool, float]:
        key = (bucket, quota.rate_per_s, quota.burst)
        co = self._takes.get(key)
        if co is None:
            co = self._takes[key] = Coalescer(
                lambda items: self._take_many(key, len(items)),
                lambda _item: self._take_one(key),
                max_items=max(1, quota.burst),
                max_inflight=1,
                on_idle=lambda: self._forget(key),
            )
        return await co.submit(None)

    def _forget(self, key: TakeKey) -> None:
        co = self._takes.get(key)
        if co is not None and co.idle:
            del self._takes[key]

    async def check(self, request: Request, bucket: str, quota: Quota, cost: int = 1) -> None:
        """Take `cost` tokens or raise 429; the RateLimit-* headers go on whatever is answered.

        cost 0 only looks: 429 when not even one token is left, and nothing is taken. A cost
        above the burst is let through from a full bucket (see take_token), so a batch larger
        than the burst is slow for its client, never impossible.
        """
        if not quota.enabled:
            return
        need = min(max(cost, 1), quota.burst)
        if cost == 0:
            level = await self.store.peek_token(
                bucket=bucket, rate_per_s=quota.rate_per_s, burst=quota.burst
            )
            allowed = level >= need
        elif cost == 1:
            allowed, level = await self._take(bucket, quota)
        else:
            allowed, level = await self.store.take_token(
                bucket=bucket, rate_per_s=quota.rate_per_s, burst=quota.burst, cost=cost, need=need
            )
        headers = rate_headers(quota, allowed, level, need)
        if not allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit exceeded: {quota.burst} requests, refilled at {quota.rate_per_s:g}/s"
                if cost <= 1
                else f"rate limit exceeded: this batch needs {need} tokens, the bucket holds "
                f"{max(0, math.floor(level))} ({quota.burst} at most, refilled at "
                f"{quota.rate_per_s:g}/s); one event is one token",
                headers=headers,
            )
        request.scope.setdefault("state", {})["response_headers"] = headers

    async def for_key(self, request: Request, principal: Principal, cost: int = 1) -> None:
        await self.check(
            request, f"key:{principal.name}", key_quota(principal, self.settings), cost
        )

    async def for_address(self, request: Request, webhook: str, quota: Quota) -> None:
        await self.check(request, f"ip:{webhook}:{client_address(request)}", quota)

    def site_quota(self) -> Quota:
        return Quota(self.settings.rate_limit_ip_per_s, self.settings.rate_limit_ip_burst)

    def whatsapp_quota(self) -> Quota:
        return Quota(
            self.settings.rate_limit_whatsapp_ip_per_s, self.settings.rate_limit_whatsapp_ip_burst
        )
