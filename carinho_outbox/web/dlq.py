"""The dead-letter queue API (admin): list with filters and keyset pagination, one dead letter
with its event and every attempt, reprocess (one or by filter), archive, and stats.

Transitions are the store's single statements (dlq_reprocess, dlq_archive): dead → pending
wakes the workers with NOTIFY; dead → archived takes the row out of the DLQ counts.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..ops import dlq_stats
from .body import json_body
from .errors import ApiError
from .jsonify import jsonable
from .opsutil import (
    decode_cursor,
    encode_cursor,
    int_path,
    like_literal,
    query_dict,
    validate,
)
from .schemas import DlqBulkReprocess, DlqListQuery

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


async def list_dead(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    await hub.auth.admin(request)
    query = validate(DlqListQuery, query_dict(request))
    after = decode_cursor(query.cursor) if query.cursor else None
    # One row more than asked tells whether a next page exists without a count.
    rows = await hub.store.dlq_list(
        event_type=query.event_type,
        destination=query.destination,
        since=query.since,
        until=query.until,
        error=like_literal(query.error),
        after=after,
        limit=query.limit + 1,
    )
    page = rows[: query.limit]
    more = len(rows) > query.limit
    cursor = encode_cursor(page[-1]["dead_at"], page[-1]["id"]) if more and page else None
    return JSONResponse(jsonable({"items": page, "next": cursor}))


async def show_dead(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    await hub.auth.admin(request)
    delivery_id = int_path(request, "delivery_id")
    row = await hub.store.dlq_get(id=delivery_id)
    if row is None:
        raise ApiError(404, "not_found", "no such dead letter")
    event = await hub.store.event_detail(row["event_id"])
    body: dict[str, Any] = {
        "id": row["id"],
        "status": row["status"],
        "destination": row["destination"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "last_status": row["last_status"],
        "last_response": row["last_response"],
        "dead_at": row["dead_at"],
        "archived_at": row["archived_at"],
        "reprocessed": row["reprocessed"],
        "mapping_version": row["mapping_version"],
        "event": {
            k: v for k, v in (event or {}).items() if k not in ("deliveries", "attempts")
        },
        "attempts_log": row["attempts_log"],
    }
    return JSONResponse(jsonable(body))


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ApiError(
        422,
        "validation_error",
        "invalid parameters",
        [{"path": name, "message": "expected true or false", "type": "bool_parsing"}],
    )


async def _must_be_dead(hub: Any, delivery_id: int) -> None:
    """A 404 for ids that are not dead letters, a 409 for one that no longer is dead."""
    row = await hub.store.dlq_get(id=delivery_id)
    if row is None:
        raise ApiError(404, "not_found", "no such dead letter")
    if row["status"] != "dead":
        raise ApiError(409, "conflict", f"this delivery is {row['status']}, not dead")


async def reprocess_one(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    principal = await hub.auth.admin(request)
    delivery_id = int_path(request, "delivery_id")
    remap = _flag(request, "remap")
    rows = await hub.store.reprocess_dead(ids=[delivery_id], remap=remap)
    if not rows:
        await _must_be_dead(hub, delivery_id)
        # Dead but locked by a concurrent reprocess/archive (SKIP LOCKED): try again.
        raise ApiError(409, "conflict", "this dead letter is being changed; retry")
    log.info(
        "dead letter reprocessed",
        extra={"action": "dlq_reprocessed", "delivery_id": delivery_id, "by": principal.name},
    )
    return JSONResponse(
        {"id": delivery_id, "status": "pending", "mapping_version": rows[0]["mapping_version"]}
    )


async def reprocess_bulk(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    principal = await hub.auth.admin(request)
    raw = await json_body(request, hub.settings.max_body_bytes)
    if not isinstance(raw, dict):
        raise ApiError(
            422,
            "validation_error",
            "invalid parameters",
            [{"path": "", "message": "expected a JSON object", "type": "dict_type"}],
        )
    body = validate(DlqBulkReprocess, raw)
    if body.is_empty() and not body.all:
        raise ApiError(
            422,
            "validation_error",
            "give at least one filter, or \"all\": true to reprocess the whole DLQ",
            [{"path": "all", "message": "required without a filter", "type": "missing_filter"}],
        )
    rows = await hub.store.reprocess_dead(
        event_type=body.event_type,
        destination=body.destination,
        since=body.since,
        until=body.until,
        error=like_literal(body.error),
        remap=body.remap,
        limit=body.limit,
    )
    log.info(
        "dead letters reprocessed",
        extra={"action": "dlq_reprocessed_bulk", "count": len(rows), "by": principal.name},
    )
    return JSONResponse(
        {"reprocessed": len(rows), "limit": body.limit, "more": len(rows) >= body.limit}
    )


async def archive_one(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    principal = await hub.auth.admin(request)
    delivery_id = int_path(request, "delivery_id")
    archived = await hub.store.archive_dead(ids=[delivery_id])
    if not archived:
        await _must_be_dead(hub, delivery_id)
        raise ApiError(409, "conflict", "this dead letter is being changed; retry")
    log.info(
        "dead letter archived",
        extra={"action": "dlq_archived", "delivery_id": delivery_id, "by": principal.name},
    )
    return JSONResponse({"id": delivery_id, "status": "archived"})


async def stats(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    await hub.auth.admin(request)
    return JSONResponse(jsonable(await dlq_stats(hub.store)))
