"""The retry policy: a pure function of (attempt, result, policy, random), no I/O.

Backoff is exponential with "equal jitter": the n-th retry waits between half and all of
base * 2^(n-1) (capped), so delays grow monotonically while retries of many deliveries that
failed together still spread out. A Retry-After from the destination is honoured when it asks
for longer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from .records import OutcomeStatus, SendResult
from .settings import RetryPolicy

# Statuses a destination may answer when trying again later can succeed (DESIGN.md §5).
RETRYABLE_HTTP = frozenset({408, 409, 425, 429})


@dataclass(frozen=True, slots=True)
class Decision:
    status: OutcomeStatus
    delay_s: float = 0.0
    reason: str | None = None


def classify_http(status: int) -> str:
    """'ok', 'retry' or 'permanent' for an HTTP status."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRYABLE_HTTP or status >= 500:
        return "retry"
    return "permanent"


def backoff_s(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Delay before attempt `attempt + 1`, given that attempt `attempt` (1-based) failed."""
    r = rng or random
    ceiling = min(policy.cap_s, policy.base_s * (2 ** max(attempt - 1, 0)))
    return ceiling / 2 + r.uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def decide(
    *,
    attempt: int,
    max_attempts: int,
    result: SendResult,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Decision:
    if result.ok:
        return Decision("delivered")
    if result.permanent:
        return Decision("dead", reason="permanent failure")
    if attempt >= max_attempts:
        return Decision("dead", reason=f"gave up after {attempt} attempts")
    delay = backoff_s(attempt, policy, rng)
    if result.retry_after_s is not None:
        delay = max(delay, min(result.retry_after_s, policy.retry_after_cap_s))
    return Decision("pending", delay_s=delay)
