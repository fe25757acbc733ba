"""`POST /events` and `GET /events/{id}`."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..ingress import IngressError
from ..payloads import pydantic_error_details
from .body import json_body
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
