"""LISTEN_DATABASE_URL: the worker's LISTEN session uses its own DSN (a direct connection when
the pools go through PgBouncer in transaction mode); the pool keeps DATABASE_URL."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from carinho_outbox.registry import build_adapters, build_policies, http_client
from carinho_outbox.store import Store
from carinho_outbox.worker import Worker
from tests.conftest import make_settings
from tests.support.engine import eventually, ingest, running_worker
from tests.support.receiver import Receiver
from tests.support.samples import PAYLOADS, SOURCE_FOR
from tests.test_engine import dest_env

# Nothing listens on port 1: a connection there is refused at once.
NOWHERE = "postgresql://postgres@127.0.0.1:1/carinho?connect_timeout=2"


def delivered(db: psycopg.Connection) -> int:
    row = db.execute("select count(*) from deliveries where status = 'delivered'").fetchone()
    return int(row[0]) if row else 0


async def test_the_listener_uses_its_own_dsn_and_polling_covers_its_failure(
    dsn: str,
    store: Store,
    db: psycopg.Connection,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(LISTEN_DATABASE_URL=NOWHERE, **dest_env(receiver))
    assert settings.poll_interval_s <= 1.0
    client = http_client(settings, settings.worker_concurrency)
    worker = Worker(
        settings, store, build_adapters(settings, client, store), build_policies(settings), dsn=dsn
    )
    assert worker.listen_dsn == NOWHERE
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="carinho_outbox.worker")
    task = asyncio.create_task(worker.run(stop))
    try:
        _, destinations, _ = await ingest(
            store, "payment.received", PAYLOADS["payment.received"], SOURCE_FOR["payment.received"]
        )
        # The pool (DATABASE_URL) works: the deliveries go out by polling, with no listener.
        await eventually(lambda: delivered(db) == len(destinations), timeout_s=15)
        assert not worker.listening.is_set()
        assert any(getattr(r, "action", None) == "listen_failed" for r in caplog.records)
        # The DSN is not in the warning (it may hold a password).
        assert not any("127.0.0.1:1" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await client.aclose()


async def test_a_reachable_listen_dsn_wakes_the_worker(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(LISTEN_DATABASE_URL=dsn, POLL_INTERVAL_S="30", **dest_env(receiver))
    async with running_worker(settings, store, "postgresql://unused@127.0.0.1:1/x") as worker:
        assert worker.listen_dsn == dsn and worker.listening.is_set()
        _, destinations, _ = await ingest(
            store, "payment.received", PAYLOADS["payment.received"], SOURCE_FOR["payment.received"]
        )
        # Polling every 30 s cannot explain a delivery within 5 s: the NOTIFY did.
        await eventually(lambda: delivered(db) == len(destinations), timeout_s=5)
