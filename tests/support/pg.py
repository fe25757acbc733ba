"""Which Postgres the tests use: the server on 127.0.0.1:5432 (or the PG* environment) when
one answers, otherwise an embedded one (pgserver) started for the session."""

from __future__ import annotations

from carinho_outbox.embedded_pg import PgServer as Server
from carinho_outbox.embedded_pg import find_server as _find_server

__all__ = ["Server", "find_server"]


def find_server() -> Server:
    return _find_server("carinho-test-pg-")
