"""NOTIFY on the edges (wakeups.py): a burst of ingests wakes workers with a leading NOTIFY from
the first statement and one trailing NOTIFY for the rest, heard on a real LISTEN session."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from carinho_outbox.wakeups import EdgeNotifier
from tests.conftest import make_settings
from tests.support.samples import PAYLOADS
from tests.support.web import bearer, client, make_key

EVENT = {"type": "payment.received", "payload": PAYLOADS["payment.received"]}


def heard(
    listener: psycopg.Connection, within_s: float, stop_after: int | None = None
) -> list[tuple[float, str]]:
    """The notifications that arrive within `within_s` (or the first `stop_after`)."""
    got: list[tuple[float, str]] = []
    for n in listener.notifies(timeout=within_s, stop_after=stop_after):
        got.append((time.monotonic(), n.payload))
    return got


@pytest.fixture
def listener(dsn: str):  # type: ignore[no-untyped-def]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("listen carinho_outbox")
        yield conn


def test_a_burst_sends_one_leading_and_one_trailing_notify(
    dsn: str, db: psycopg.Connection, listener: psycopg.Connection
) -> None:
    key = make_key(dsn, "finance", ["financeiro"])
    with client(make_settings(NOTIFY_WINDOW_MS="400"), dsn) as c:
        started = time.monotonic()
        for _ in range(20):
            assert c.post("/events", headers=bearer(key), json=EVENT).status_code == 202
        burst_s = time.monotonic() - started
        got = heard(listener, within_s=1.5)
    accepted = db.execute("select count(*) from deliveries").fetchone()
    assert accepted is not None and accepted[0] == 40  # 20 events x 2 destinations
    queues = [q for _, q in got]
    # All of payment.received's routes use one queue (critical): the first statement notified
    # it, and (unless the burst outlasted the window) one trailing NOTIFY covered the 19 others.
    assert set(queues) == {"critical"}, queues
    windows = int(burst_s / 0.4) + 1
    assert 2 <= len(queues) <= 2 * windows, (len(queues), burst_s)
    assert len(queues) < 20


def test_window_zero_notifies_every_ingest(
    dsn: str, listener: psycopg.Connection
) -> None:
    key = make_key(dsn, "finance", ["financeiro"])
    with client(make_settings(NOTIFY_WINDOW_MS="0"), dsn) as c:
        for _ in range(5):
            assert c.post("/events", headers=bearer(key), json=EVENT).status_code == 202
        got = heard(listener, within_s=0.5)
    assert [q for _, q in got] == ["critical"] * 5


def test_the_first_event_after_idle_notifies_at_once(
    dsn: str, listener: psycopg.Connection
) -> None:
    key = make_key(dsn, "finance", ["financeiro"])
    with client(make_settings(NOTIFY_WINDOW_MS="1000"), dsn) as c:
        sent = time.monotonic()
        assert c.post("/events", headers=bearer(key), json=EVENT).status_code == 202
        got = heard(listener, within_s=0.5, stop_after=1)
        # Within the 1 s window a second event is folded: nothing is heard for it yet...
        assert c.post("/events", headers=bearer(key), json=EVENT).status_code == 202
        later = heard(listener, within_s=0.2)
    # ...and shutting the app down sends the pending trailing NOTIFY instead of dropping it.
    at_close = heard(listener, within_s=1.0)
    assert len(got) == 1 and got[0][0] - sent < 0.5
    assert later == []
    assert [q for _, q in at_close] == ["critical"]


async def test_a_failed_trailing_notify_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[list[str]] = []

    async def send(queues: list[str]) -> None:
        sent.append(queues)
        raise psycopg.OperationalError("server closed the connection")

    edges = EdgeNotifier(0.01, send)
    assert edges.lead() is True
    assert edges.lead() is False
    edges.trail(["low", "default"])
    edges.trail(["default"])
    await asyncio.sleep(0.1)
    await edges.close()
    assert sent == [["default", "low"]]
    assert (edges.leading, edges.folded, edges.trailing) == (1, 2, 1)
    assert "trailing notify failed" in caplog.text


def test_batches_follow_the_same_edges(
    dsn: str, db: psycopg.Connection, listener: psycopg.Connection
) -> None:
    key = make_key(dsn, "finance", ["financeiro"])
    batch = {"events": [EVENT] * 3}
    with client(make_settings(NOTIFY_WINDOW_MS="1000"), dsn) as c:
        assert c.post("/events/batch", headers=bearer(key), json=batch).status_code == 202
        got = heard(listener, within_s=0.5, stop_after=1)
        # A second batch inside the window does not notify by itself...
        assert c.post("/events/batch", headers=bearer(key), json=batch).status_code == 202
        later = heard(listener, within_s=0.2)
    at_close = heard(listener, within_s=1.0)
    assert db.execute("select count(*) from events").fetchone() == (6,)
    assert [q for _, q in got] == ["critical"]
    assert later == []
    # ...its queues are woken by the trailing NOTIFY (here: sent at shutdown).
    assert [q for _, q in at_close] == ["critical"]
