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

from .. import metrics
from ..ingress import Accepted, Ingress
from ..settings import Settings
from ..store import Store, make_pool
from ..wakeups import EdgeNotifier
from . import events, feedback, health, mappings_api, site_webhook, whatsapp_webhook
from .auth import Authenticator
from .errors import HANDLERS
from .middleware import DeadlineMiddleware, RequestLogMiddleware
from .ops_api import dashboard, dlq, metrics_view, openapi, status, swagger_assets
from .ratelimit import RateLimiter


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
        window_s = settings.notify_window_ms / 1000
        self.store.wakeups = EdgeNotifier(window_s, self.store.notify_queues)
        self.auth = Authenticator(self.store, settings.auth_cache_s)
        self.ingress = Ingress(
            self.store,
            group_max=settings.ingest_group_max,
            group_inflight=settings.ingest_group_inflight,
        )
        self.limiter = RateLimiter(self.store, settings)

    def observe_event(self, event_type: str, sources: tuple[str, ...], accepted: Accepted) -> None:
        """Hook for metrics; see metrics.py."""
        metrics.observe_event(event_type, sources, accepted.duplicate)


MAPPING_PAIR = "/mappings/{event_type}/{destination}"


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
            await hub.ingress.close()
            if hub.store.wakeups is not None:
                await hub.store.wakeups.close()
            await hub.pool.close()

    routes = [
        Route("/health", health.live, methods=["GET"]),
        Route("/health/detailed", health.detailed, methods=["GET"]),
        Route("/events", events.post_event, methods=["POST"]),
        Route("/events/batch", events.post_events_batch, methods=["POST"]),
        Route("/events/{event_id}", events.get_event, methods=["GET"]),
        # public webhooks (issue 3)
        Route("/webhooks/site/lead", site_webhook.post_site_lead, methods=["POST"]),
        Route("/webhooks/whatsapp", whatsapp_webhook.post_whatsapp, methods=["POST"]),
        Route("/webhooks/whatsapp/{token}", whatsapp_webhook.post_whatsapp, methods=["POST"]),
        # the feedback form of the e-mail link (issue 5): HTML for clients, not part of the API
        Route("/feedback/{token}", feedback.get_feedback, methods=["GET"], include_in_schema=False),
        Route(
            "/feedback/{token}", feedback.post_feedback, methods=["POST"], include_in_schema=False
        ),
        # operating it (issue 6), admin only
        Route("/status", status.status, methods=["GET"]),
        Route("/metrics", metrics_view.metrics, methods=["GET"]),
        Route("/dlq", dlq.list_dead, methods=["GET"]),
        Route("/dlq/stats", dlq.stats, methods=["GET"]),
        Route("/dlq/reprocess", dlq.reprocess_bulk, methods=["POST"]),
        Route("/dlq/{delivery_id}", dlq.show_dead, methods=["GET"]),
        Route("/dlq/{delivery_id}/reprocess", dlq.reprocess_one, methods=["POST"]),
        Route("/dlq/{delivery_id}/archive", dlq.archive_one, methods=["POST"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/docs", openapi.docs, methods=["GET"]),
        Route("/docs/static/docs-init.js", openapi.docs_init, include_in_schema=False),
        swagger_assets(),
        Route("/dashboard", dashboard.page, methods=["GET"]),
        # the dashboard's own pages and actions: HTML, not part of the API document
        Route("/dashboard/login", dashboard.login_form, methods=["GET"], include_in_schema=False),
        Route("/dashboard/login", dashboard.login, methods=["POST"], include_in_schema=False),
        Route("/dashboard/logout", dashboard.logout, methods=["POST"], include_in_schema=False),
        Route("/dashboard/live", dashboard.live, methods=["GET"], include_in_schema=False),
        Route("/dashboard/event", dashboard.event_lookup, methods=["GET"], include_in_schema=False),
        Route(
            "/dashboard/dlq/{delivery_id}/{action}",
            dashboard.dlq_action,
            methods=["POST"],
            include_in_schema=False,
        ),
        Route("/dashboard/static/{name}", dashboard.static, include_in_schema=False),
        # versioned mappings and the routing table (issue 4), admin only
        Route("/mappings", mappings_api.list_mappings, methods=["GET"]),
        Route(MAPPING_PAIR, mappings_api.show_mapping, methods=["GET"]),
        Route(MAPPING_PAIR, mappings_api.save_mapping, methods=["POST"]),
        Route(MAPPING_PAIR + "/activate", mappings_api.activate_mapping, methods=["POST"]),
        Route(MAPPING_PAIR + "/rollback", mappings_api.rollback_mapping, methods=["POST"]),
        Route(MAPPING_PAIR + "/diff", mappings_api.diff_mapping, methods=["GET"]),
        Route(MAPPING_PAIR + "/preview", mappings_api.preview_mapping, methods=["POST"]),
        Route("/routes", mappings_api.list_routes, methods=["GET"]),
        Route("/routes/{event_type}/{destination}", mappings_api.show_route, methods=["GET"]),
        Route("/routes/{event_type}/{destination}", mappings_api.put_route, methods=["PUT"]),
    ]
    handlers: dict[Any, Any] = dict(HANDLERS)
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestLogMiddleware),
            Middleware(DeadlineMiddleware, deadline_s=settings.request_deadline()),
            Middleware(metrics_view.ObserveRequests),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app
