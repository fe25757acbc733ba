"""A development Postgres under .pgdata/ when DATABASE_URL is unset.

Uses the `pgserver` package (server binaries shipped in a wheel); it runs as root too, by
dropping to a dedicated system user. Only for development and tests, never production.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import psycopg

log = logging.getLogger(__name__)


def start(pgdata: Path, *, keep_running: bool = False) -> tuple[str, Any]:
    """Start (or reuse) the server; returns (dsn, handle). Keep the handle alive while in use."""
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - installed by `make run`
        raise RuntimeError(
            "DATABASE_URL is unset and the embedded server is not installed: "
            "pip install 'carinho-outbox[embedded]' or set DATABASE_URL"
        ) from exc
    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    uri = server.get_uri()
    log.info("embedded postgres ready", extra={"action": "embedded_pg", "pgdata": str(pgdata)})
    return uri, server


def resolve_dsn(database_url: str | None, pgdata: Path) -> tuple[str, Any]:
    if database_url:
        return database_url, None
    return start(pgdata)


@dataclass
class PgServer:
    """A server the tests and the benchmark create scratch databases on."""

    host: str
    port: int
    user: str
    password: str | None
    handle: Any = None
    embedded: bool = False

    def dsn(self, dbname: str) -> str:
        parts = [f"host={self.host}", f"port={self.port}", f"user={self.user}", f"dbname={dbname}"]
        if self.password:
            parts.append(f"password={self.password}")
        return " ".join(parts)

    def url(self, dbname: str) -> str:
        """The same as a URL (asyncpg and pgqueuer want one); a socket dir goes in `host=`."""
        auth = self.user + (f":{self.password}" if self.password else "")
        if self.host.startswith("/"):
            return f"postgresql://{auth}@/{dbname}?host={self.host}&port={self.port}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"


def _answers(server: PgServer) -> bool:
    try:
        with psycopg.connect(server.dsn("postgres"), connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def find_server(scratch_prefix: str) -> PgServer:
    """The server on 127.0.0.1:5432 (or the PG* environment) when it answers, else a throwaway
    pgserver in a temporary directory named with `scratch_prefix` (deleted when dropped)."""
    env_server = PgServer(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=int(os.environ.get("PGPORT", "5432")),
        user=os.environ.get("PGUSER", "postgres"),
        password=os.environ.get("PGPASSWORD"),
    )
    if _answers(env_server):
        return env_server
    import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix=scratch_prefix))
    handle = pgserver.get_server(pgdata, cleanup_mode="delete")
    uri = urlparse(handle.get_uri())
    query = dict(p.split("=", 1) for p in uri.query.split("&") if "=" in p)
    return PgServer(
        host=unquote(query.get("host", uri.hostname or "127.0.0.1")),
        port=uri.port or 5432,
        user=unquote(uri.username or "postgres"),
        password=uri.password,
        handle=handle,
        embedded=True,
    )
