"""Admin endpoints for versioned mappings (`/mappings/…`) and the routing table (`/routes/…`).

Thin: parse the request, call MappingsAdmin (shared with the CLI), translate its errors:
unknown pair or version → 404, bad spec / payload / route → 422 with one detail per problem
(for a spec, each message names the offending rule).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..mappings_admin import AdminError, MappingsAdmin, RouteChange
from ..payloads import pydantic_error_details
from .body import json_body
from .errors import ApiError
from .jsonify import jsonable

Handler = Callable[[Request], Awaitable[JSONResponse]]

_STATUS = {"not_found": (404, "not_found"), "invalid": (422, "validation_error")}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _admin_errors(fn: Handler) -> Handler:
    @wraps(fn)
    async def wrapper(request: Request) -> JSONResponse:
        try:
            return await fn(request)
        except AdminError as exc:
            status, code = _STATUS[exc.kind]
            raise ApiError(status, code, exc.message, exc.details) from None

    return wrapper


async def _admin(request: Request) -> tuple[MappingsAdmin, str]:
    hub = request.app.state.hub
    principal = await hub.auth.admin(request)
    request.scope["state"]["client"] = principal.name
    return MappingsAdmin(hub.store, queues=hub.settings.queues), f"key:{principal.name}"


def _pair(request: Request) -> tuple[str, str]:
    return request.path_params["event_type"], request.path_params["destination"]


def _query_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ApiError(
            422,
            "validation_error",
            f"query parameter {name!r} must be a version number (1, 2, …)",
            [{"path": name, "message": "expected a positive integer", "type": "int_parsing"}],
        )
    return value


def _query_bool(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ApiError(
        422,
        "validation_error",
        f"query parameter {name!r} must be true or false",
        [{"path": name, "message": "expected true or false", "type": "bool_parsing"}],
    )


def _model(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "invalid request body", pydantic_error_details(exc, "")
        ) from None


async def _body(request: Request) -> Any:
    return await json_body(request, request.app.state.hub.settings.max_body_bytes)


# --------------------------------------------------------------------------- mappings


@_admin_errors
async def list_mappings(request: Request) -> JSONResponse:
    """Every (event type, destination) pair with its active and latest mapping version."""
    admin, _ = await _admin(request)
    rows = await admin.list_pairs(request.query_params.get("type") or None)
    return JSONResponse({"mappings": jsonable(rows)})


@_admin_errors
async def show_mapping(request: Request) -> JSONResponse:
    """One pair: its route, every version (with spec) and the activation log."""
    admin, _ = await _admin(request)
    return JSONResponse(jsonable(await admin.show(*_pair(request))))


@_admin_errors
async def save_mapping(request: Request) -> JSONResponse:
    """Body: the spec. Saves version n+1; `?activate=true` also makes it active; `?note=`."""
    admin, actor = await _admin(request)
    activate = _query_bool(request, "activate")
    spec = await _body(request)
    row = await admin.save(
        *_pair(request),
        spec,
        activate=activate,
        actor=actor,
        note=request.query_params.get("note"),
    )
    return JSONResponse(jsonable(row), status_code=201)


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, strict=True)


@_admin_errors
async def activate_mapping(request: Request) -> JSONResponse:
    """Body `{"version": n}`: make that saved version the active one."""
    admin, actor = await _admin(request)
    body = _model(ActivateIn, await _body(request))
    row = await admin.activate(*_pair(request), body.version, actor=actor)
    return JSONResponse(jsonable(row))


@_admin_errors
async def rollback_mapping(request: Request) -> JSONResponse:
    """Activate the highest version below the active one."""
    admin, actor = await _admin(request)
    return JSONResponse(jsonable(await admin.rollback(*_pair(request), actor=actor)))


@_admin_errors
async def diff_mapping(request: Request) -> JSONResponse:
    """`?from=&to=` (defaults: the active version, the latest version): a unified diff."""
    admin, _ = await _admin(request)
    doc = await admin.diff(*_pair(request), _query_int(request, "from"), _query_int(request, "to"))
    return JSONResponse(doc)


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: UUID | None = None
    payload: dict[str, Any] | None = None
    version: int | None = Field(default=None, ge=1, strict=True)
    source: str | None = Field(default=None, min_length=1, max_length=50)
    occurred_at: AwareDatetime | None = None


@_admin_errors
async def preview_mapping(request: Request) -> JSONResponse:
    """Body `{"event_id"}` or `{"payload"}` (+ optional `version`): the exact envelope (and
    its encoded `body`) the destination would receive. Nothing is sent or written."""
    admin, _ = await _admin(request)
    body = _model(PreviewIn, await _body(request))
    doc = await admin.preview(
        *_pair(request),
        event_id=body.event_id,
        payload=body.payload,
        version=body.version,
        source=body.source,
        occurred_at=body.occurred_at,
    )
    return JSONResponse(jsonable(doc))


# --------------------------------------------------------------------------- routes


@_admin_errors
async def list_routes(request: Request) -> JSONResponse:
    """The routing table: type → destination, queue, priority, delay, enabled."""
    admin, _ = await _admin(request)
    return JSONResponse({"routes": jsonable(await admin.list_routes())})


@_admin_errors
async def show_route(request: Request) -> JSONResponse:
    """One route and its history (newest first)."""
    admin, _ = await _admin(request)
    return JSONResponse(jsonable(await admin.route(*_pair(request))))


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: str | None = None
    priority: int | None = Field(default=None, strict=True)
    delay_s: int | None = Field(default=None, strict=True)
    enabled: StrictBool | None = None


@_admin_errors
async def put_route(request: Request) -> JSONResponse:
    """Body: any of queue, priority, delay_s, enabled; omitted fields keep their value. Creates
    the route when the type and destination are known. Every change lands in routes_history."""
    admin, actor = await _admin(request)
    body = _model(RouteIn, await _body(request))
    change = RouteChange(
        queue=body.queue, priority=body.priority, delay_s=body.delay_s, enabled=body.enabled
    )
    row = await admin.set_route(*_pair(request), change, actor=actor)
    return JSONResponse(jsonable(row), status_code=201 if row["created"] else 200)
