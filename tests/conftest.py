"""Shared fixtures: a real Postgres (a template database migrated from sql/ once per session,
cloned per test), real loopback HTTP receivers, and settings with short timings."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from carinho_outbox.migrate import migrate
from carinho_outbox.settings import Settings, load_settings, sql_dir
from carinho_outbox.store import Store, make_pool
from tests.support.pg import Server, find_server
from tests.support.receiver import Receiver

TEMPLATE_DB = f"carinho_tmpl_{os.getpid()}"

# Short timings so that retries, leases and polls happen within a test's patience.
FAST_ENV = {
    "POLL_INTERVAL_S": "0.2",
    "LEASE_S": "3",
    "HEARTBEAT_S": "0.5",
    "REQUEST_TIMEOUT_S": "2",
    "RETRY_BASE_S": "0.1",
    "RETRY_CAP_S": "1",
    "MAX_ATTEMPTS": "5",
    "SHUTDOWN_GRACE_S": "3",
    "AUTH_CACHE_S": "0",
    "LOG_FORMAT": "json",
}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    server = find_server()
    yield server
    if server.handle is not None:
        server.handle.cleanup()


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> Iterator[str]:
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=TEMPLATE_DB,
        as_template=True,
    )
    janitor.init()
    migrate(pg_server.dsn(TEMPLATE_DB), sql_dir())
    yield TEMPLATE_DB
    janitor.drop()


@pytest.fixture
def dsn(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh, fully migrated database for this test."""
    name = f"carinho_t_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=name,
        template_dbname=template_db,
    )
    janitor.init()
    yield pg_server.dsn(name)
    janitor.drop()


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection]:
    """A plain autocommit connection for asserting on rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    pool = make_pool(dsn, max_size=4, timeout_s=5.0, name="carinho-test")
    await pool.open(wait=True, timeout=10)
    try:
        yield Store(pool)
    finally:
        await pool.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def make_settings(**env: str) -> Settings:
    merged = {**FAST_ENV, **env}
    return load_settings(env=merged)


@pytest.fixture
def settings_factory():  # type: ignore[no-untyped-def]
    return make_settings
