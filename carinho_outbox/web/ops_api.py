"""The operator endpoints of issue 6, gathered so app.py imports them in one line."""

from __future__ import annotations

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from . import dashboard, dlq, metrics_view, openapi, status


def swagger_assets() -> Mount:
    """`/docs/static`: the Swagger UI files of the swagger-ui-py package."""
    return Mount("/docs/static", app=StaticFiles(directory=openapi.swagger_static_dir()))


__all__ = ["dashboard", "dlq", "metrics_view", "openapi", "status", "swagger_assets"]
