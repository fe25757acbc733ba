"""Request id and one JSON log line per request (pure ASGI: no per-request task overhead)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("carinho_outbox.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Paths that carry a secret (the Z-API webhook token, a feedback link's token) are logged with
# the secret replaced.
_SECRET_PATHS = (re.compile(r"^(/webhooks/whatsapp/)[^/]+"), re.compile(r"^(/feedback/)[^/]+"))


def loggable_path(path: str) -> str:
    for pattern in _SECRET_PATHS:
        path = pattern.sub(r"\1***", path)
    return path


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                # Set by a handler that wants headers on every answer, errors included (the
                # rate limiter's RateLimit-*).
                for name, value in (state.get("response_headers") or {}).items():
                    headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            log.info(
                "request",
                extra={
                    "action": "request",
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": loggable_path(scope["path"]),
                    "route": getattr(route, "path", None),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": state.get("client"),
                    "event_ids": state.get("event_ids"),
                },
            )
            observer = state.get("observe_request")
            if observer is not None:
                observer(scope, status, time.perf_counter() - started)
