"""The error contract of DESIGN.md §3: `{"error": {"code", "message", "details"?}}`."""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


class ErrorJSONResponse(JSONResponse):
    """ASCII-escaped JSON: an error's details can name a field the client sent, and a key
    holding a lone surrogate (valid in JSON text, not in UTF-8) must not turn a 422 into a 500."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return ErrorJSONResponse({"error": body}, status_code=status, headers=headers)


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


# What the operator should look at, per cause; the client only ever sees the 503.
_DB_HINTS = {
    "PoolTimeout": "no pooled connection within DB_POOL_TIMEOUT_S: database down, slow or "
    "the pool too small",
    "ReadOnlySqlTransaction": "the database refuses writes: read-only "
    "(default_transaction_read_only, or a standby after a failover)",
    "DiskFull": "the database server is out of disk space",
    "LockNotAvailable": "a lock was held longer than lock_timeout",
}


async def database_down(request: Request, exc: Exception) -> JSONResponse:
    cause = type(exc).__name__
    hint = _DB_HINTS.get(cause, "the database is unreachable or failing")
    log.error(
        "database unavailable: %s (%s)",
        cause,
        hint,
        extra={"action": "db_unavailable", "path": request.url.path, "cause": cause},
    )
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry later",
        headers={"Retry-After": "5"},
    )


async def bad_value(request: Request, exc: Exception) -> JSONResponse:
    # A value Postgres cannot take (a NUL in a text path or query parameter, a number out of
    # range): the client's input, so a 422, not a 500. The server's message can quote the
    # value, so neither the log nor the answer repeats it.
    log.warning(
        "value refused by the database: %s",
        type(exc).__name__,
        extra={"action": "bad_value", "path": request.url.path},
    )
    return error_response(
        422,
        "invalid_value",
        "a value in the request cannot be stored (a NUL character, a number out of range, …)",
    )


async def client_gone(request: Request, exc: Exception) -> JSONResponse:
    # The client hung up before its body was read (it timed out while we waited on the
    # database, say): nothing failed here and nobody will read the answer. 499 as nginx logs it.
    log.info(
        "client closed the connection", extra={"action": "client_gone", "path": request.url.path}
    )
    return error_response(499, "client_closed_request", "the client closed the connection")


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"action": "unhandled", "path": request.url.path})
    return error_response(500, "internal_error", "unexpected error; it has been logged")


HANDLERS: dict[Any, Any] = {
    ApiError: api_error,
    HTTPException: http_error,
    PoolTimeout: database_down,
    psycopg.OperationalError: database_down,
    psycopg.errors.ReadOnlySqlTransaction: database_down,
    psycopg.errors.DiskFull: database_down,
    psycopg.errors.AdminShutdown: database_down,
    psycopg.DataError: bad_value,
    ClientDisconnect: client_gone,
    Exception: unexpected,
}
