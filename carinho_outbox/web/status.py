"""`GET /status` (admin): counts, throughput, retries, DLQ, lag, workers as JSON."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..ops import status_report
from .jsonify import jsonable
from .opsutil import configured


async def status(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    await hub.auth.admin(request)
    report = await status_report(hub.store, hub.settings, configured(request))
    return JSONResponse(jsonable(report))
