"""The web's connection pool exhausted: requests must get a 503 in bounded time, not hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.faults.support import Stack, client_registered, record
from tests.faults.tcpproxy import TcpProxy

pytestmark = pytest.mark.faults

POOL_TIMEOUT_S = 1.0
LOCK_TIMEOUT_S = 5.0  # store._configure: `set lock_timeout = '5s'` on every pooled connection
CONCURRENT = 8


def fire(
    url: str, key: str, prefix: str, n: int, timeout_s: float = 30.0
) -> list[tuple[int | str, float]]:
    """n concurrent POST /events; (status or exception name, seconds) each."""
    out: list[tuple[int | str, float]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        started = time.monotonic()
        try:
            r = httpx.post(url, json=client_registered(prefix, i), timeout=timeout_s,
                           headers={"Authorization": f"Bearer {key}"})
            got: int | str = r.status_code
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "database_unavailable"
                assert r.headers["retry-after"]
        except httpx.HTTPError as exc:
            got = type(exc).__name__
        with lock:
            out.append((got, time.monotonic() - started))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_pool_exhausted_by_a_held_lock_answers_503_in_bounded_time(
    dsn: str, db: psycopg.Connection, stack: Stack, crm_key: str
) -> None:
    """Fault: the web runs with DB_POOL_MAX=1 and another session holds an ACCESS EXCLUSIVE
    lock on `events` (a stuck migration or a runaway admin transaction), so the one pooled
    connection blocks on the lock and every other request waits for the pool.

    Expected: the request holding the connection gets 503 when the web's request deadline
    (twice DB_POOL_TIMEOUT_S) or lock_timeout (5 s) fires, whichever is first, the
    others 503 after DB_POOL_TIMEOUT_S (1 s) — none hangs, none is a 500, nothing is written;
    /health stays 200 at once; when the lock goes, the same process answers 202 again."""
    web = stack.web(DB_POOL_MAX="1", DB_POOL_TIMEOUT_S=str(POOL_TIMEOUT_S))
    url = web.url("/events")
    with psycopg.connect(dsn) as holder:
        holder.execute("lock table events in access exclusive mode")
        answers = fire(url, crm_key, "pool", CONCURRENT)
        live = httpx.get(web.url("/health"), timeout=2)
        assert live.status_code == 200
        holder.rollback()
    statuses = [a for a, _ in answers]
    assert statuses == [503] * CONCURRENT, statuses
    times = sorted(t for _, t in answers)
    assert times[-1] < LOCK_TIMEOUT_S + 2.5, times
    # Most did not wait for the lock at all: they were refused by the pool's timeout.
    assert times[CONCURRENT // 2] < POOL_TIMEOUT_S + 1.5, times
    assert db.execute("select count(*) from events").fetchone() == (0,)
    released = time.monotonic()
    after = fire(url, crm_key, "pool-after", 3)
    recover_s = time.monotonic() - released
    assert [a for a, _ in after] == [202, 202, 202]
    logged = stack.log_lines("db_unavailable")
    deadlines = stack.log_lines("deadline_exceeded")
    assert len(logged) + len(deadlines) == CONCURRENT
    assert {line["cause"] for line in logged} <= {"PoolTimeout", "LockNotAvailable"}
    assert "PoolTimeout" in {line["cause"] for line in logged}
    assert all("DB_POOL_TIMEOUT_S" in line["message"] or "lock_timeout" in line["message"]
               for line in logged)
    record(
        "test_pool_exhausted_by_a_held_lock_answers_503_in_bounded_time",
        "web pool exhausted (DB_POOL_MAX=1, a held ACCESS EXCLUSIVE lock)",
        {
            "events_sent": CONCURRENT,
            "accepted": 0,
            "answered_503": statuses.count(503),
            "slowest_answer_s": round(times[-1], 2),
            "median_answer_s": round(times[CONCURRENT // 2], 2),
            "recover_s": round(recover_s, 2),
            "delivered": 0,
            "dead_lettered": 0,
            "duplicated": 0,
        },
    )


@pytest.fixture
def stalling_proxy(dsn: str) -> Iterator[tuple[TcpProxy, str]]:
    params = conninfo_to_dict(dsn)
    proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))).start()
    params.update(host="127.0.0.1", port=str(proxy.port), connect_timeout="3")
    try:
        yield proxy, make_conninfo(**params)
    finally:
        proxy.resume()
        proxy.stop()


CLIENT_TIMEOUT_S = 6.0


def test_a_stalled_database_answers_503_in_bounded_time(
    db: psycopg.Connection, stack: Stack, crm_key: str, stalling_proxy: tuple[TcpProxy, str]
) -> None:
    """Fault: the database stops answering without closing anything (a frozen server, a
    black-holed network: TCP stays up, no byte comes back), with DB_POOL_MAX=1.

    Expected: every request is answered 503 within a bound (pool timeout plus slack), even the
    one whose query is stuck on the only connection (the web's request deadline, twice
    DB_POOL_TIMEOUT_S, answers it); 202 again after the stall."""
    proxy, via_proxy = stalling_proxy
    web = stack.web(dsn=via_proxy, DB_POOL_MAX="1", DB_POOL_TIMEOUT_S=str(POOL_TIMEOUT_S))
    url = web.url("/events")
    proxy.stall()
    try:
        answers = fire(url, crm_key, "stall", 4, timeout_s=CLIENT_TIMEOUT_S)
    finally:
        proxy.resume()
    after = fire(url, crm_key, "stall-after", 2)
    assert sorted(a for a, _ in after) == [202, 202]
    # The client that gave up is logged as gone (499), not as a server error.
    assert stack.log_lines("unhandled") == []
    assert [a for a, _ in answers] == [503] * 4, answers
    assert max(t for _, t in answers) < POOL_TIMEOUT_S + 3, answers
