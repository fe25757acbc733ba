"""`carinho-worker` with in-process no-op adapters for the benchmark destinations.

The real worker process (worker_cli.main: settings, pool, LISTEN, claim, flush, heartbeat),
with only the adapters swapped for ones that answer "delivered" without any I/O: the engine's
own cost per delivery, with HTTP taken out. Used by `make bench` beside the HTTP figure.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from psycopg_pool import AsyncConnectionPool

from .. import store as store_module
from .. import worker_cli
from ..records import Job, SendResult
from .common import DESTINATIONS


class NoopAdapter:
    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult:
        return SendResult(ok=True, http_status=200, response="{}", duration_ms=0.0)

    async def aclose(self) -> None:
        return None


def _noop_adapters(*_args: Any, **_kw: Any) -> dict[str, Any]:
    return {name: NoopAdapter(name) for name in DESTINATIONS}


def _pool_without_check(
    dsn: str, *, max_size: int, timeout_s: float, name: str, check: bool = False
) -> AsyncConnectionPool:
    """store.make_pool minus the per-checkout health check (one round trip per statement)."""
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        timeout=timeout_s,
        name=name,
        open=False,
        configure=store_module._configure,
        kwargs={"autocommit": True, "application_name": name},
        reconnect_timeout=60.0,
    )


def main(argv: list[str] | None = None) -> None:
    # worker_cli looks build_adapters up in its own namespace at call time.
    worker_cli.build_adapters = _noop_adapters  # type: ignore[assignment]
    if os.environ.get("BENCH_TUNED") == "1":
        # Both changes this prototyped are in the worker now (no pool check per checkout, one
        # INFO line per flushed batch); it stays comparable with earlier runs, and differs
        # from the core figure only by LOG_LEVEL=WARNING (set by the harness).
        worker_cli.make_pool = _pool_without_check  # type: ignore[assignment]
    worker_cli.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
