"""Fixtures of the fault-injection suite: real processes on a fresh database, their logs kept
in the test's tmp_path (and scanned for leaks by each test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.faults.support import LOAD_DESTINATIONS, Stack
from tests.support.web import make_key

# What every process of this suite runs with, on top of tests.conftest.FAST_ENV. Limits and
# breakers are tested elsewhere (test_rate_limit, test_protection): here they would only hide
# the fault under test.
BASE_ENV = {
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "json",
    "RATE_LIMIT_PER_S": "0",
    "RATE_LIMIT_IP_PER_S": "0",
    "BREAKER_THRESHOLD": "100000",
    "DB_POOL_TIMEOUT_S": "2",
    "WORKER_CONCURRENCY": "20",
}


@pytest.fixture(autouse=True)
def load_routes(db: psycopg.Connection) -> None:
    """The load's event type goes only to the HTTP destinations the tests stand up: the
    channel automations (WhatsApp, e-mail, contacts) have suites of their own, and a
    destination left unconfigured would hold its deliveries (by design) and never settle."""
    db.execute(
        "update routes set enabled = false "
        "where event_type = 'client.registered' and destination <> all(%s)",
        (list(LOAD_DESTINATIONS),),
    )


@pytest.fixture
def stack(dsn: str, tmp_path: Path) -> Iterator[Stack]:
    logs = tmp_path / "logs"
    logs.mkdir()
    s = Stack(dsn, logs, dict(BASE_ENV))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def crm_key(dsn: str) -> str:
    return make_key(dsn, "faults-crm", ["crm"])


@pytest.fixture
def admin_key(dsn: str) -> str:
    return make_key(dsn, "faults-admin", [], admin=True)
