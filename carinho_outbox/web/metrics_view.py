"""`GET /metrics` (public, or admin when METRICS_PUBLIC=false) and the request observer."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..metrics import CONTENT_TYPE, DbFigures, observe_request, render
from ..settings import Settings
from ..store import Store
from .opsutil import configured


async def read_figures(store: Store, settings: Settings, destinations: set[str]) -> DbFigures:
    try:
        states = await store.ops_state_gauges()
        oldest = await store.alert_oldest_pending(destinations=sorted(destinations))
        workers = await store.list_workers(alive_within_s=settings.worker_dead_after_s)
    except (psycopg.Error, PoolTimeout, OSError):
        # The process metrics are still worth serving; carinho_db_up says why gauges are gone.
        return DbFigures(up=False)
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
    return DbFigures(
        up=True,
        states=states,
        oldest_pending_age_s=max(0.0, age),
        workers_alive=sum(1 for w in workers if w["alive"] and not w["stopping"]),
    )


async def metrics(request: Request) -> Response:
    hub = request.app.state.hub
    if not hub.settings.metrics_public:
        await hub.auth.admin(request)
    figures = await read_figures(hub.store, hub.settings, configured(request))
    return Response(render(figures), media_type=CONTENT_TYPE)


class ObserveRequests:
    """Hands RequestLogMiddleware the metrics observer it calls once a request is done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["observe_request"] = observe_request
        await self.app(scope, receive, send)
