"""`POST /events`, `POST /events/batch` and `GET /events/{id}`."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..ingress import BatchEvent, IngressError
from ..payloads import MAX_REPORTED_ERRORS, pydantic_error_details
from .body import json_body, jsonb_safe_text, parse_json, read_body, require_json
from .errors import ApiError
from .jsonify import jsonable


class EventIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any]
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    occurred_at: AwareDatetime | None = None
    source: str | None = Field(default=None, min_length=1, max_length=50)


class EventAccepted(BaseModel):
    event_id: UUID
    deliveries: list[str]
    duplicate: bool


class EventBatchIn(BaseModel):
    """The OpenAPI shape of POST /events/batch (the handler checks each item on its own, so a
    refusal names `events[i]`)."""

    events: list[EventIn] = Field(
        min_length=1,
        description="events as POST /events takes them, at most INGEST_BATCH_MAX (default 500) "
        "per request; all are written or none",
    )


class BatchItemResult(EventAccepted):
    index: int = Field(description="the item's position in `events`, from 0")


class EventBatchAccepted(BaseModel):
    accepted: int = Field(description="events written by this request")
    duplicates: int = Field(description="items answered with an earlier event (same key)")
    results: list[BatchItemResult] = Field(description="one per item, in request order")


def ingress_error(exc: IngressError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.details)


async def post_event(request: Request) -> JSONResponse:
    app = request.app.state.hub
    principal = await app.auth.authenticate(request)
    request.scope["state"]["client"] = principal.name
    # Before reading the body: a client over its limit costs one statement, nothing more.
    await app.limiter.for_key(request, principal)
    raw = await json_body(request, app.settings.max_body_bytes)
    try:
        body = EventIn.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "invalid event envelope", pydantic_error_details(exc, "")
        ) from None
    try:
        accepted = await app.ingress.accept(
            event_type=body.type,
            payload=body.payload,
            key_sources=principal.sources,
            source=body.source,
            client=principal.name,
            idempotency_key=body.idempotency_key,
            occurred_at=body.occurred_at,
            request_id=request.scope["state"].get("request_id"),
        )
    except IngressError as exc:
        raise ingress_error(exc) from None
    request.scope["state"]["event_ids"] = [str(accepted.event_id)]
    app.observe_event(body.type, principal.sources, accepted)
    return JSONResponse(
        {
            "event_id": str(accepted.event_id),
            "deliveries": accepted.destinations,
            "duplicate": accepted.duplicate,
        },
        status_code=200 if accepted.duplicate else 202,
    )


def batch_items(raw: Any, limit: int) -> list[Any]:
    """The `events` list of a batch body, or the error that refuses the whole request."""
    if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
        raise ApiError(
            422,
            "validation_error",
            'the body must be {"events": [...]}',
            [{"path": "events", "message": "a list of events is required", "type": "list_type"}],
        )
    items: list[Any] = raw["events"]
    if not items:
        raise ApiError(
            422,
            "validation_error",
            "the batch is empty",
            [{"path": "events", "message": "at least one event", "type": "too_short"}],
        )
    if len(items) > limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"a batch holds at most {limit} events (INGEST_BATCH_MAX); this one has {len(items)}",
            [{"path": "events", "message": f"at most {limit} events", "type": "too_long"}],
        )
    return items


def batch_envelopes(items: list[Any]) -> tuple[list[BatchEvent | None], list[dict[str, Any]]]:
    """Each item's envelope checked as POST /events checks it; errors at `events[i]…`."""
    events: list[BatchEvent | None] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        prefix = f"events[{index}]"
        try:
            body = EventIn.model_validate(item)
        except ValidationError as exc:
            events.append(None)
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.extend(pydantic_error_details(exc, prefix))
            continue
        if body.idempotency_key is not None and "\x00" in body.idempotency_key:
            # Postgres text cannot hold NUL: name the item rather than fail the statement.
            events.append(None)
            errors.append(
                {
                    "path": f"{prefix}.idempotency_key",
                    "message": "NUL characters are not allowed",
                    "type": "string_pattern_mismatch",
                }
            )
            continue
        events.append(
            BatchEvent(body.type, body.payload, body.source, body.idempotency_key, body.occurred_at)
        )
    return events, errors


async def post_events_batch(request: Request) -> JSONResponse:
    app = request.app.state.hub
    settings = app.settings
    principal = await app.auth.authenticate(request)
    state = request.scope["state"]
    state["client"] = principal.name
    # Before reading the body: a client with no token left costs one read, nothing more.
    await app.limiter.for_key(request, principal, cost=0)
    require_json(request)
    text = await read_body(request, settings.ingest_batch_max_body_bytes)
    items = batch_items(parse_json(text), settings.ingest_batch_max)
    # The access log shows how many events, never what they carry.
    state["event_count"] = len(items)
    await app.limiter.for_key(request, principal, cost=len(items))
    events, invalid = batch_envelopes(items)
    try:
        accepted = await app.ingress.accept_batch(
            events,
            key_sources=principal.sources,
            client=principal.name,
            request_id=state.get("request_id"),
            invalid=invalid,
            # One scan of the body instead of a walk of every payload (a batch's hot spot).
            jsonb_safe=jsonb_safe_text(text),
        )
    except IngressError as exc:
        raise ingress_error(exc) from None
    # accept_batch refused the batch if any item was None: these pair up one to one.
    types = [ev.type for ev in events if ev is not None]
    results = []
    duplicates = 0
    for index, (event_type, done) in enumerate(zip(types, accepted, strict=True)):
        app.observe_event(event_type, principal.sources, done)
        duplicates += done.duplicate
        results.append(
            {
                "index": index,
                "event_id": str(done.event_id),
                "deliveries": done.destinations,
                "duplicate": done.duplicate,
            }
        )
    return JSONResponse(
        {"accepted": len(results) - duplicates, "duplicates": duplicates, "results": results},
        # As POST /events: 200 when nothing new was written.
        status_code=200 if duplicates == len(results) else 202,
    )


async def get_event(request: Request) -> JSONResponse:
    app = request.app.state.hub
    await app.auth.admin(request)
    try:
        event_id = UUID(request.path_params["event_id"])
    except ValueError:
        raise ApiError(404, "not_found", "no such event") from None
    detail = await app.store.event_detail(event_id)
    if detail is None:
        raise ApiError(404, "not_found", "no such event")
    return JSONResponse(jsonable(detail))
