"""A real HTTP server on loopback standing in for a destination (CRM, Operacao, …).

It records every request (path, headers, body) and answers per a script, so tests assert on
the bytes received. Runs uvicorn in a thread with its own loop, on a socket bound to port 0.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    query: str = ""  # the raw query string (the sync stand-ins page on it)
    method: str = "POST"
    # What the script answered (None until it has): a 2xx means the destination took it, so a
    # second 2xx for the same webhook-id is a duplicate (the fault tests count them).
    answered: int | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: str = '{"ok":true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Script = Callable[[Received, int], Reply]


def always(status: int = 200, **kw: Any) -> Script:
    return lambda _r, _n: Reply(status=status, **kw)


class Receiver:
    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or always(200)
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._gate: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["POST", "GET", "PUT"])]
        )
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.server.serve(sockets=[self.sock]))

    def start(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.release()
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def hold(self) -> None:
        """Hold every request open until release() (to catch a worker mid-dispatch)."""
        assert self._loop is not None
        gate = asyncio.Event()
        self._gate = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(gate.set)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        got = Received(
            request.url.path, dict(request.headers), body, time.time(), request.url.query,
            request.method,
        )
        with self._lock:
            self.requests.append(got)
            n = len(self.requests)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            gate = self._gate
            if gate is not None:
                await gate.wait()
            reply = self.script(got, n)
            got.answered = reply.status
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
        finally:
            with self._lock:
                self.in_flight -= 1
        return Response(
            reply.body,
            status_code=reply.status,
            headers=reply.headers,
            media_type="application/json",
        )

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"receiver got {len(self.requests)} requests, expected {count}")
