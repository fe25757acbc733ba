"""Drive the real Starlette app in-process (TestClient runs its lifespan) with real keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.testclient import TestClient

from carinho_outbox.cli import create_key
from carinho_outbox.settings import Settings
from carinho_outbox.store import Store, make_pool
from carinho_outbox.web.app import create_app


def make_key(dsn: str, name: str, sources: list[str], admin: bool = False, **kw: Any) -> str:
    async def run() -> str:
        pool = make_pool(dsn, max_size=1, timeout_s=5, name="test-keys")
        await pool.open(wait=True)
        try:
            return await create_key(Store(pool), name=name, sources=sources, admin=admin, **kw)
        finally:
            await pool.close()

    return asyncio.run(run())


@contextmanager
def client(settings: Settings, dsn: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings, dsn), raise_server_exceptions=False) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
