"""A development Postgres under .pgdata/ when DATABASE_URL is unset.

Uses the `pgserver` package (server binaries shipped in a wheel); it runs as root too, by
dropping to a dedicated system user. Only for development and tests, never production.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
