"""Seeding helpers for the operator tests (issue 6): rows in every state, written with plain
SQL on the test's own database, so each test states exactly what the hub should report."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import psycopg
import uvicorn

from tests.support.samples import PAYLOADS, SOURCE_FOR


def add_event(
    db: psycopg.Connection,
    event_type: str = "lead.created",
    payload: dict[str, Any] | None = None,
    received_ago_s: float = 0.0,
) -> str:
    row = db.execute(
        "insert into events (type, source, payload, received_at, occurred_at)"
        " values (%s, %s, %s, now() - make_interval(secs => %s), now())"
        " returning id::text",
        (
            event_type,
            SOURCE_FOR.get(event_type, "hub"),
            json.dumps(payload if payload is not None else PAYLOADS[event_type]),
            received_ago_s,
        ),
    ).fetchone()
    assert row is not None
    return row[0]


def add_delivery(
    db: psycopg.Connection,
    event_id: str,
    destination: str = "crm",
    status: str = "pending",
    *,
    attempts: int = 0,
    ago_s: float = 0.0,
    due_in_s: float = 0.0,
    error: str | None = None,
    created_ago_s: float | None = None,
) -> int:
    """A delivery in a given state; `ago_s` is how long ago it finished or died."""
    row = db.execute(
        """
        insert into deliveries (event_id, destination, status, attempts, available_at,
                                last_error, last_status, last_response, finished_at, dead_at,
                                created_at, locked_by, locked_until)
        values (%(event_id)s, %(destination)s, %(status)s, %(attempts)s,
                now() + make_interval(secs => %(due_in_s)s), %(error)s,
                case when %(error)s::text is not null then 400 end,
                case when %(error)s::text is not null then '{"error":"bad"}' end,
                case when %(status)s in ('delivered', 'dead')
                     then now() - make_interval(secs => %(ago_s)s) end,
                case when %(status)s = 'dead' then now() - make_interval(secs => %(ago_s)s) end,
                now() - make_interval(secs => %(created_ago_s)s),
                case when %(status)s = 'running' then 'test-worker' end,
                case when %(status)s = 'running' then now() + interval '1 minute' end)
        returning id
        """,
        {
            "event_id": event_id,
            "destination": destination,
            "status": status,
            "attempts": attempts,
            "due_in_s": due_in_s,
            "error": error,
            "ago_s": ago_s,
            "created_ago_s": created_ago_s if created_ago_s is not None else ago_s,
        },
    ).fetchone()
    assert row is not None
    return int(row[0])


def add_attempt(
    db: psycopg.Connection,
    delivery_id: int,
    attempt: int,
    outcome: str,
    destination: str = "crm",
    ago_s: float = 0.0,
    status: int | None = None,
    error: str | None = None,
) -> None:
    db.execute(
        "insert into webhook_deliveries (delivery_id, attempt, destination, outcome,"
        " response_status, duration_ms, error, worker, created_at)"
        " values (%s, %s, %s, %s, %s, 12.5, %s, 'test-worker',"
        " now() - make_interval(secs => %s))",
        (delivery_id, attempt, destination, outcome, status, error, ago_s),
    )


def add_dead(
    db: psycopg.Connection,
    destination: str = "crm",
    event_type: str = "lead.created",
    error: str = "HTTP 400",
    ago_s: float = 60.0,
    attempts: int = 3,
) -> int:
    event_id = add_event(db, event_type, received_ago_s=ago_s + 30)
    delivery_id = add_delivery(
        db, event_id, destination, "dead", attempts=attempts, ago_s=ago_s, error=error
    )
    for n in range(1, attempts + 1):
        add_attempt(
            db,
            delivery_id,
            n,
            "dead" if n == attempts else "retry",
            destination,
            ago_s=ago_s + (attempts - n),
            status=400 if n == attempts else 503,
            error=error if n == attempts else "HTTP 503",
        )
    return delivery_id


def add_live_worker(
    db: psycopg.Connection, worker_id: str = "w-1", queues: str = "{critical,default,low}"
) -> None:
    db.execute(
        "insert into workers (id, host, pid, queues, concurrency) values (%s, 'test', 1, %s, 10)",
        (worker_id, queues),
    )


class AppServer:
    """A Starlette app under a real uvicorn on a loopback port (for browsers and fuzzers)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(
            target=lambda: self.server.run(sockets=[self.sock]), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "app server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
