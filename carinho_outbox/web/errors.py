"""The error contract of DESIGN.md §3: `{"error": {"code", "message", "details"?}}`."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
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


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def database_down(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "database unavailable: %s",
        type(exc).__name__,
        extra={"action": "db_unavailable", "path": request.url.path},
    )
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry later",
        headers={"Retry-After": "5"},
    )


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
    Exception: unexpected,
}
