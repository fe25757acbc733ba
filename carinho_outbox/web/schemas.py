"""Request and response models of the operator API: validation of what comes in, and the
schemas /openapi.json publishes (one source for both, so the document cannot drift)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

# Postgres text cannot hold NUL; refusing it here turns it into a 422, never a 500.
_NO_NUL = r"^[^\x00]*$"


def _text(max_length: int) -> Any:
    return Field(default=None, min_length=1, max_length=max_length, pattern=_NO_NUL)


class ErrorDetail(BaseModel):
    """One problem of a 422: the dotted field path and what is wrong with it."""

    path: str
    message: str
    type: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = Field(
        default=None, description="for 422, a list of ErrorDetail (field paths); else free form"
    )


class ErrorBody(BaseModel):
    """Every error: `{"error": {"code", "message", "details"?}}` (DESIGN.md §3)."""

    error: ErrorInfo


# --- dead-letter queue ---------------------------------------------------------------------


class DlqFilter(BaseModel):
    """Which dead letters: the same filter for listing and for bulk reprocessing."""

    model_config = ConfigDict(extra="forbid")

    event_type: str | None = _text(100)
    destination: str | None = _text(100)
    since: AwareDatetime | None = Field(default=None, description="dead at or after (ISO 8601)")
    until: AwareDatetime | None = Field(default=None, description="dead before (ISO 8601)")
    error: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=_NO_NUL,
        description="text the last error contains (case-insensitive, taken literally)",
    )

    @model_validator(mode="after")
    def _range(self) -> DlqFilter:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("'since' must be before 'until'")
        return self

    def is_empty(self) -> bool:
        return all(
            v is None
            for v in (self.event_type, self.destination, self.since, self.until, self.error)
        )


class DlqListQuery(DlqFilter):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, min_length=1, max_length=200, pattern=_NO_NUL)


class DlqBulkReprocess(DlqFilter):
    remap: bool = Field(default=False, description="re-pin to the mapping version active now")
    all: bool = Field(default=False, description="required when no filter is given")
    limit: int = Field(default=10_000, ge=1, le=100_000)


class DlqItem(BaseModel):
    id: int
    event_id: UUID
    event_type: str
    source: str
    destination: str
    attempts: int
    last_error: str | None
    last_status: int | None
    dead_at: datetime | None
    reprocessed: int
    mapping_version: int | None
    received_at: datetime


class DlqPage(BaseModel):
    items: list[DlqItem]
    next: str | None = Field(description="cursor for the next page; null on the last page")


class Attempt(BaseModel):
    attempt: int
    destination: str
    outcome: str
    response_status: int | None
    duration_ms: float | None
    error: str | None
    request_summary: str | None
    response_body: str | None
    worker: str | None
    lease_lost: bool
    created_at: datetime


class DlqDetail(BaseModel):
    id: int
    status: Literal["dead", "archived"]
    destination: str
    attempts: int
    last_error: str | None
    last_status: int | None
    last_response: str | None
    dead_at: datetime | None
    archived_at: datetime | None
    reprocessed: int
    mapping_version: int | None
    event: dict[str, Any]
    attempts_log: list[Attempt]


class DlqActionResult(BaseModel):
    id: int
    status: Literal["pending", "archived"]
    mapping_version: int | None = None


class DlqBulkResult(BaseModel):
    reprocessed: int
    limit: int
    more: bool = Field(description="the limit was reached: call again for the rest")


class ErrorCount(BaseModel):
    error: str
    count: int


class DlqStats(BaseModel):
    size: int
    by_event_type: dict[str, int]
    by_destination: dict[str, int]
    oldest_dead_at: datetime | None
    newest_dead_at: datetime | None
    top_errors: list[ErrorCount]


# --- health and status ---------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class DestinationHealth(BaseModel):
    configured: bool
    pending: int
    dead: int
    oldest_pending_age_s: float | None
    last_success_at: datetime | None
    circuit: str | None = Field(default=None, description="present once circuit state exists")


class HealthDetailed(BaseModel):
    status: Literal["ok", "unavailable"]
    failing: list[str]
    checks: dict[str, dict[str, Any]]
    destinations: dict[str, DestinationHealth] | None = None


class StatusCount(BaseModel):
    status: str
    event_type: str
    destination: str
    count: int


class Window(BaseModel):
    received: int
    delivered: int
    failed: int


class Lag(BaseModel):
    window_s: float
    samples: int
    p50_s: float | None
    p95_s: float | None


class Status(BaseModel):
    generated_at: datetime
    counts: list[StatusCount]
    totals: dict[str, int]
    delivered_1h_by_destination: dict[str, int]
    throughput: dict[str, Window]
    retry: dict[str, Any]
    dlq: DlqStats
    lag: Lag
    oldest_pending_age_s: float
    queues: list[dict[str, Any]]
    held: list[dict[str, Any]]
    workers: dict[str, Any]
    took_ms: float


# --- events (the models of events.py, referenced here for the document) --------------------


class EventDetail(BaseModel):
    id: UUID
    type: str
    source: str
    payload: dict[str, Any]
    idempotency_key: str | None
    occurred_at: datetime
    received_at: datetime
    request_id: str | None
    client: str | None
    deliveries: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
