"""Request id and one JSON log line per request (pure ASGI: no per-request task overhead)."""

from __future__ import annotations

import asyncio
import json
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
                    # POST /events/batch: how many events, not their ids or contents.
                    "event_count": state.get("event_count"),
                },
            )
            observer = state.get("observe_request")
            if observer is not None:
                observer(scope, status, time.perf_counter() - started)


class DeadlineMiddleware:
    """Answer 503 when a request outlives its deadline.

    The pool timeout bounds the wait *for* a connection, and statement_timeout is enforced by
    the server; neither helps when the server stops answering with the TCP connection still
    open. This bounds the whole request instead; the cancelled query's connection is discarded
    by the pool.
    """

    def __init__(self, app: ASGIApp, deadline_s: float) -> None:
        self.app = app
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        expired = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if expired:
                return  # the client already has its 503
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # The handler runs as its own task and is not awaited past the deadline: cancelling a
        # query stuck on a silent connection can itself wait on that connection.
        task = asyncio.ensure_future(self.app(scope, receive, send_wrapper))
        done, _ = await asyncio.wait({task}, timeout=self.deadline_s)
        if task in done:
            task.result()
            return
        expired = True
        task.cancel()
        task.add_done_callback(_consume)
        log.error(
            "request deadline exceeded",
            extra={
                "action": "deadline_exceeded",
                "path": scope["path"],
                "deadline_s": self.deadline_s,
            },
        )
        if started:
            return
        body = json.dumps(
            {
                "error": {
                    "code": "database_unavailable",
                    "message": "the request did not finish in time; retry later",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", b"5"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _consume(task: asyncio.Future[None]) -> None:
    """Retrieve an abandoned handler's outcome so asyncio does not warn about it."""
    if not task.cancelled():
        task.exception()
