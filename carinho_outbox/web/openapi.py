"""`GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger UI, served by the app itself).

The document is built from the app's own route list, so no route can be missing from it:
routes described in OPERATIONS get their summary, auth, parameters and pydantic schemas;
any other route still appears, with its path parameters, auth and the error contract. The
schemas come from the same pydantic models that validate requests, so they cannot drift.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from .events import EventAccepted, EventBatchAccepted, EventBatchIn, EventIn
from .schemas import (
    DlqActionResult,
    DlqBulkReprocess,
    DlqBulkResult,
    DlqDetail,
    DlqListQuery,
    DlqPage,
    DlqStats,
    ErrorBody,
    EventDetail,
    Health,
    HealthDetailed,
    Status,
)

REF = "#/components/schemas/{model}"
Auth = Literal["none", "key", "admin", "metrics", "session", "site", "zapi"]

ERROR_TEXT = {
    400: "Malformed JSON or request",
    401: "Missing or invalid credentials or signature",
    403: "The key lacks the scope (or is not admin)",
    404: "No such resource",
    409: "The resource is not in a state that allows this",
    413: "Body too large",
    415: "Body is not application/json",
    422: "Validation failed; `details` lists field paths",
    429: "Rate limited; see Retry-After",
    503: "Database unavailable (or, for health, a failing check)",
}


@dataclass(frozen=True)
class Op:
    summary: str
    tag: str
    auth: Auth
    ok: dict[int, type[BaseModel] | str | None]
    errors: tuple[int, ...] = ()
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    flags: tuple[str, ...] = ()  # boolean query parameters
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ADMIN_ERRORS = (401, 403, 503)
OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/health"): Op("Liveness (no database call)", "health", "none", {200: Health}),
    ("GET", "/health/detailed"): Op(
        "Database, migrations, workers, backlog, DLQ and destinations",
        "health",
        "admin",
        {200: HealthDetailed},
        (401, 403),
        description="503 with `failing` naming the checks that fail (database, migrations, "
        "workers); the body then has the same shape as a 200.",
        extra={"503": HealthDetailed},
    ),
    ("POST", "/events"): Op(
        "Accept an event (one transaction: the event and one delivery per destination)",
        "events",
        "key",
        {202: EventAccepted, 200: EventAccepted},
        (400, 401, 403, 413, 415, 422, 429, 503),
        body=EventIn,
        description="200 answers a repeated idempotency key with the first event "
        "(`duplicate: true`).",
    ),
    ("POST", "/events/batch"): Op(
        "Accept many events at once (one transaction: all of them or none)",
        "events",
        "key",
        {202: EventBatchAccepted, 200: EventBatchAccepted},
        (400, 401, 403, 413, 415, 422, 429, 503),
        body=EventBatchIn,
        description="Each item is what POST /events takes, checked the same way; one bad item "
        "refuses the batch with 422 (or 403 for a source out of the key's scope), its paths "
        "prefixed `events[i].`, and nothing is written. More than INGEST_BATCH_MAX (default "
        "500) items, or a body over INGEST_BATCH_MAX_BODY_BYTES, is a 413. Idempotency is per "
        "item: a repeated key (earlier in the batch or stored before) answers with the first "
        "event and `duplicate: true`; 200 when every item is a duplicate, else 202. Costs one "
        "rate-limit token per event.",
    ),
    ("GET", "/events/{event_id}"): Op(
        "An event, its deliveries and every attempt",
        "events",
        "admin",
        {200: EventDetail},
        (*ADMIN_ERRORS, 404),
    ),
    ("POST", "/webhooks/site/lead"): Op(
        "The website's lead form (Standard Webhooks signature)",
        "webhooks",
        "site",
        {202: None, 200: None},
        (400, 401, 413, 415, 422, 429, 503),
    ),
    ("POST", "/webhooks/whatsapp"): Op(
        "Z-API callbacks (token and optional HMAC)",
        "webhooks",
        "zapi",
        {200: None},
        (400, 401, 413, 415, 422, 429, 503),
    ),
    ("POST", "/webhooks/whatsapp/{token}"): Op(
        "Z-API callbacks with the token in the path",
        "webhooks",
        "zapi",
        {200: None},
        (400, 401, 413, 415, 422, 429, 503),
    ),
    ("GET", "/status"): Op(
        "Counts, throughput, retries, DLQ, lag, workers",
        "operations",
        "admin",
        {200: Status},
        ADMIN_ERRORS,
    ),
    ("GET", "/metrics"): Op(
        "Prometheus exposition (admin key needed when METRICS_PUBLIC=false)",
        "operations",
        "metrics",
        {200: "text/plain"},
        (401, 403, 503),
    ),
    ("GET", "/dlq"): Op(
        "Dead letters, newest first, keyset-paginated",
        "dlq",
        "admin",
        {200: DlqPage},
        (*ADMIN_ERRORS, 422),
        query=DlqListQuery,
    ),
    ("GET", "/dlq/stats"): Op(
        "Dead letters by event type and by destination",
        "dlq",
        "admin",
        {200: DlqStats},
        ADMIN_ERRORS,
    ),
    ("POST", "/dlq/reprocess"): Op(
        "Reprocess every dead letter matching the filter (dead → pending)",
        "dlq",
        "admin",
        {200: DlqBulkResult},
        (*ADMIN_ERRORS, 400, 413, 415, 422),
        body=DlqBulkReprocess,
    ),
    ("GET", "/dlq/{delivery_id}"): Op(
        "One dead letter: the event, the last response and every attempt",
        "dlq",
        "admin",
        {200: DlqDetail},
        (*ADMIN_ERRORS, 404),
    ),
    ("POST", "/dlq/{delivery_id}/reprocess"): Op(
        "Reprocess one dead letter (dead → pending)",
        "dlq",
        "admin",
        {200: DlqActionResult},
        (*ADMIN_ERRORS, 404, 409, 422),
        flags=("remap",),
    ),
    ("POST", "/dlq/{delivery_id}/archive"): Op(
        "Archive one dead letter (dead → archived)",
        "dlq",
        "admin",
        {200: DlqActionResult},
        (*ADMIN_ERRORS, 404, 409),
    ),
    ("GET", "/openapi.json"): Op("This document", "meta", "none", {200: "application/json"}),
    ("GET", "/docs"): Op("Swagger UI (served locally)", "meta", "none", {200: "text/html"}),
    ("GET", "/dashboard"): Op(
        "The operator dashboard (HTML; log in with an admin key)",
        "dashboard",
        "session",
        {200: "text/html", 303: None},
    ),
}

SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    "none": [],
    "key": [{"bearerAuth": []}, {"apiKeyAuth": []}],
    "admin": [{"bearerAuth": []}, {"apiKeyAuth": []}],
    "metrics": [{}, {"bearerAuth": []}, {"apiKeyAuth": []}],
    "session": [{"sessionCookie": []}],
    "site": [{"webhookSignature": []}],
    "zapi": [{"zapiToken": []}],
}

_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
_INT_PARAMS = {"delivery_id"}


class Components:
    """Collects pydantic schemas; nested models land in components too."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        if model.__name__ not in self.schemas:
            schema = model.model_json_schema(ref_template=REF)
            for name, sub in schema.pop("$defs", {}).items():
                self.schemas.setdefault(name, sub)
            self.schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}


def _content(kind: type[BaseModel] | str | None, comps: Components) -> dict[str, Any]:
    if kind is None:
        return {"application/json": {"schema": {"type": "object"}}}
    if isinstance(kind, str):
        schema: dict[str, Any] = (
            {"type": "object"} if kind == "application/json" else {"type": "string"}
        )
        return {kind: {"schema": schema}}
    return {"application/json": {"schema": comps.ref(kind)}}


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        out.append(param)
    return out


def _operation(method: str, path: str, comps: Components) -> dict[str, Any]:
    op = OPERATIONS.get((method, path))
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "format": "int64"}
            if name in _INT_PARAMS
            else {"type": "string"},
        }
        for name in _PARAM.findall(path)
    ]
    if op is None:
        # Described only by the contract every route shares: admin auth, JSON, the errors.
        op = Op(
            f"{method} {path}",
            path.strip("/").split("/")[0] or "root",
            "admin",
            {200: None},
            (*ADMIN_ERRORS, 400, 404, 409, 415, 422),
            description="Admin endpoint; see the README for its body.",
            extra={"_generic_body": method in ("POST", "PUT", "PATCH")},
        )
    if op.query is not None:
        params.extend(_query_params(op.query))
    for flag in op.flags:
        params.append(
            {
                "name": flag,
                "in": "query",
                "required": False,
                "schema": {"type": "boolean", "default": False},
            }
        )
    responses: dict[str, Any] = {}
    for status, kind in op.ok.items():
        responses[str(status)] = {"description": "OK", "content": _content(kind, comps)}
        if status == 303:
            responses[str(status)] = {"description": "Redirect to the login page"}
    for status in op.errors:
        responses[str(status)] = {
            "description": ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": comps.ref(ErrorBody)}},
        }
    for status, model in op.extra.items():
        if status.isdigit() and isinstance(model, type):
            responses[status] = {
                "description": "A check failed",
                "content": {"application/json": {"schema": comps.ref(model)}},
            }
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": _operation_id(method, path),
        "tags": [op.tag],
        "responses": responses,
        "security": SECURITY[op.auth],
    }
    if op.description:
        out["description"] = op.description
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": comps.ref(op.body)}},
        }
    elif op.extra.get("_generic_body"):
        out["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return out


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^a-zA-Z0-9]+", "_", path).strip("_") or "root"
    return f"{method.lower()}_{words}"


def _routes(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Route) and route.include_in_schema:
            for method in sorted((route.methods or set()) - {"HEAD"}):
                out.append((method, prefix + route.path))
        elif isinstance(route, Mount) and route.routes:
            out.extend(_routes(list(route.routes), prefix + route.path))
    return out


def build_spec(routes: list[BaseRoute]) -> dict[str, Any]:
    comps = Components()
    paths: dict[str, dict[str, Any]] = {}
    for method, path in _routes(routes):
        template = _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)
        paths.setdefault(template, {})[method.lower()] = _operation(method, template, comps)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "carinho_outbox",
            "version": "0.1.0",
            "description": "Carinho's integration hub: a Postgres-only outbox. Errors are "
            '`{"error": {"code", "message", "details"?}}` (DESIGN.md §3).',
        },
        "paths": paths,
        "components": {
            "schemas": comps.schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "API key"},
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "carinho_session",
                    "description": "set by POST /dashboard/login",
                },
                "webhookSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "webhook-signature",
                    "description": "Standard Webhooks: webhook-id, webhook-timestamp and "
                    "webhook-signature (v1, HMAC-SHA256 with SITE_WEBHOOK_SECRET)",
                },
                "zapiToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Webhook-Token",
                    "description": "ZAPI_WEBHOOK_TOKEN (or in the path / `token` query)",
                },
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    state = request.app.state
    cached = getattr(state, "openapi_json", None)
    if cached is None:
        cached = json.dumps(build_spec(list(request.app.routes))).encode()
        state.openapi_json = cached
    return Response(cached, media_type="application/json")


def swagger_static_dir() -> Path:
    """The Swagger UI 5 assets shipped by the swagger-ui-py package (no CDN)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


DOCS_HTML = """<!doctype html>
<html lang="pt-BR">
<head>
  <meta charset="utf-8">
  <title>carinho_outbox — API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script src="/docs/static/docs-init.js"></script>
</body>
</html>
"""

DOCS_INIT_JS = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false
});
"""


async def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(DOCS_HTML)


async def docs_init(request: Request) -> Response:
    return Response(DOCS_INIT_JS, media_type="application/javascript")
