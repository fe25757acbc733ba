"""Plain data passed between the store, the worker and the adapters (no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

OutcomeStatus = Literal["delivered", "pending", "dead"]


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery, with the event it carries."""

    id: int
    event_id: UUID
    destination: str
    attempt: int
    max_attempts: int | None
    mapping_version: int | None
    queue: str
    type: str
    source: str
    payload: dict[str, Any]
    occurred_at: datetime
    received_at: datetime
    ordering_key: str | None = None


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One validated event of a POST /events/batch (or of a group of single events), ready to
    be written. request_id/client: the item's own, for a group of separate requests; None
    takes the batch's."""

    type: str
    source: str
    payload: dict[str, Any]
    idempotency_key: str | None
    occurred_at: datetime | None
    ordering_key: str | None
    request_id: str | None = None
    client: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What an adapter observed; the retry policy turns it into an Outcome."""

    ok: bool
    permanent: bool = False
    http_status: int | None = None
    error: str | None = None
    response: str | None = None
    retry_after_s: float | None = None
    request_summary: str | None = None
    external_id: str | None = None
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    job: Job
    status: OutcomeStatus
    result: SendResult
    delay_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
