"""Which Postgres the tests use: the server on 127.0.0.1:5432 (or the PG* environment) when
one answers, otherwise an embedded one (pgserver) started for the session."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import psycopg


@dataclass
class Server:
    host: str
    port: int
    user: str
    password: str | None
    handle: Any = None

    def dsn(self, dbname: str) -> str:
        parts = [f"host={self.host}", f"port={self.port}", f"user={self.user}", f"dbname={dbname}"]
        if self.password:
            parts.append(f"password={self.password}")
        return " ".join(parts)


def _answers(server: Server) -> bool:
    try:
        with psycopg.connect(server.dsn("postgres"), connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def find_server() -> Server:
    env_server = Server(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=int(os.environ.get("PGPORT", "5432")),
        user=os.environ.get("PGUSER", "postgres"),
        password=os.environ.get("PGPASSWORD"),
    )
    if _answers(env_server):
        return env_server
    import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="carinho-test-pg-"))
    handle = pgserver.get_server(pgdata, cleanup_mode="delete")
    uri = urlparse(handle.get_uri())
    query = dict(p.split("=", 1) for p in uri.query.split("&") if "=" in p)
    host = unquote(query.get("host", uri.hostname or "127.0.0.1"))
    return Server(
        host=host,
        port=uri.port or 5432,
        user=unquote(uri.username or "postgres"),
        password=uri.password,
        handle=handle,
    )
