"""The web pool tests a connection on checkout only after it sat idle (store._check_if_idle):
a connection reused at once costs no extra round trip, one idle longer is tested and replaced
when the server dropped it."""

from __future__ import annotations

import psycopg
import pytest

from carinho_outbox import store as store_mod
from carinho_outbox.store import make_pool


async def backend_pid(pool) -> int:  # type: ignore[no-untyped-def]
    async with pool.connection() as conn:
        row = await (await conn.execute("select pg_backend_pid()")).fetchone()
        return int(row[0])


def kill(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", [pid])


async def test_an_idle_connection_killed_by_the_server_is_replaced_on_checkout(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "CHECK_IDLE_AFTER_S", 0.0)
    pool = make_pool(dsn, max_size=1, timeout_s=5, name="t-check")
    await pool.open(wait=True)
    try:
        first = await backend_pid(pool)
        kill(dsn, first)
        second = await backend_pid(pool)  # tested, found dead, replaced: no error
        assert second != first
    finally:
        await pool.close()


async def test_a_connection_reused_at_once_is_not_tested(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "CHECK_IDLE_AFTER_S", 3600.0)
    pool = make_pool(dsn, max_size=1, timeout_s=5, name="t-check")
    await pool.open(wait=True)
    try:
        first = await backend_pid(pool)
        kill(dsn, first)
        # No test round trip: the dead connection is handed out and the statement fails
        # (callers answer 503 / retry); the pool then discards it.
        with pytest.raises(psycopg.OperationalError):
            await backend_pid(pool)
        assert await backend_pid(pool) != first
    finally:
        await pool.close()
