"""Liveness and the detailed health check."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def detailed(request: Request) -> JSONResponse:
    hub = request.app.state.hub
    await hub.auth.admin(request)
    checks: dict[str, dict[str, object]] = {}
    started = time.perf_counter()
    try:
        await hub.store.ping()
        checks["database"] = {
            "ok": True,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    except Exception as exc:  # any failure here is the answer, not an error
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    healthy = all(bool(c["ok"]) for c in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", "checks": checks},
        status_code=200 if healthy else 503,
    )
