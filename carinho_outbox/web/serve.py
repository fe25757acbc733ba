"""`carinho-web`: the ingress under uvicorn."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from ..embedded_pg import resolve_dsn
from ..logs import setup_logging
from ..migrate import MigrationError, ensure_current
from ..settings import load_settings, sql_dir
from .app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="carinho-web", description=__doc__)
    parser.add_argument("--host", help="bind address (default HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default PORT or 8000)")
    args = parser.parse_args(argv)
    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level, "web")
    dsn, _server = resolve_dsn(settings.database_url, settings.pgdata_dir)
    try:
        ensure_current(dsn, sql_dir(settings))
    except MigrationError as exc:
        print(f"carinho-web: {exc}", file=sys.stderr)
        sys.exit(2)
    app = create_app(settings, dsn)
    uvicorn.run(
        app,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
