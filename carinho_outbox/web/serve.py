"""`carinho-web`: the ingress under uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ..embedded_pg import resolve_dsn
from ..logs import setup_logging
from ..migrate import MigrationError, ensure_current
from ..settings import load_settings, sql_dir
from .app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="carinho-web", description=__doc__)
    parser.add_argument("--host", help="bind address (default HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default PORT or 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="web processes sharing the port (uvicorn's supervisor); one per core: a web "
        "process is CPU-bound long before its database connections are",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level, "web")
    dsn, _server = resolve_dsn(settings.database_url, settings.pgdata_dir)
    try:
        ensure_current(dsn, sql_dir(settings))
    except MigrationError as exc:
        print(f"carinho-web: {exc}", file=sys.stderr)
        sys.exit(2)
    common: dict[str, Any] = {
        "host": args.host or settings.host,
        "port": args.port or settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
    }
    if args.workers > 1:
        # Children import the app by name and read the environment again; the DSN resolved
        # here (possibly an embedded server this process owns) is handed to them through it.
        os.environ["DATABASE_URL"] = dsn
        uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=args.workers, **common)
        return
    uvicorn.run(create_app(settings, dsn), **common)


def app_from_env() -> Starlette:
    """The app of one `--workers` child (each child sets up its own logging and pool)."""
    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level, "web")
    if not settings.database_url:  # started by hand instead of through main()
        raise RuntimeError("DATABASE_URL is required for a carinho-web child process")
    return create_app(settings, settings.database_url)


if __name__ == "__main__":
    main()
