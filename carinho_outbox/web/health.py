"""Liveness and the detailed health check."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..ops import health_report
from .jsonify import jsonable
from .opsutil import configured


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def detailed(request: Request) -> JSONResponse:
    """200 when the hub can do its job; 503 naming the failing checks (database reachable,
    migrations current, a live worker). Backlog, DLQ and destinations are reported only."""
    hub = request.app.state.hub
    await hub.auth.admin(request)
    healthy, body = await health_report(hub.store, hub.settings, configured(request))
    return JSONResponse(jsonable(body), status_code=200 if healthy else 503)
