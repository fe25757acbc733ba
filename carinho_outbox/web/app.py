"""`create_app(settings)`: explicit wiring, a literal route list, one pool per process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..ingress import Accepted, Ingress
from ..settings import Settings
from ..store import Store, make_pool
from . import events, health
from .auth import Authenticator
from .errors import HANDLERS
from .middleware import RequestLogMiddleware


class Hub:
    """Everything a request handler needs, built once per process."""

    def __init__(self, settings: Settings, dsn: str) -> None:
        self.settings = settings
        self.dsn = dsn
        self.pool = make_pool(
            dsn,
            max_size=settings.db_pool_max,
            timeout_s=settings.db_pool_timeout_s,
            name="carinho-web",
        )
        self.store = Store(self.pool)
        self.auth = Authenticator(self.store, settings.auth_cache_s)
        self.ingress = Ingress(self.store)

    def observe_event(self, event_type: str, sources: tuple[str, ...], accepted: Accepted) -> None:
        """Hook for metrics; see metrics.py."""


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": "not_found", "message": "no such route"}}, status_code=404
    )


def create_app(settings: Settings, dsn: str) -> Starlette:
    hub = Hub(settings, dsn)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Do not wait for the database: the process serves /health and answers 503 until
        # Postgres is reachable.
        await hub.pool.open(wait=False)
        try:
            yield
        finally:
            await hub.pool.close()

    routes = [
        Route("/health", health.live, methods=["GET"]),
        Route("/health/detailed", health.detailed, methods=["GET"]),
        Route("/events", events.post_event, methods=["POST"]),
        Route("/events/{event_id}", events.get_event, methods=["GET"]),
    ]
    handlers: dict[Any, Any] = dict(HANDLERS)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestLogMiddleware)],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app
