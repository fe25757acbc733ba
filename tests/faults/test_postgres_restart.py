"""Postgres goes away under load (at the network boundary) and comes back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.faults.support import (
    Load,
    Stack,
    client_registered,
    receiver_env,
    reconcile,
    record,
    secrets_in,
    wait_for_worker,
    wait_settled,
)
from tests.faults.tcpproxy import TcpProxy, wait_port_refused
from tests.support.procs import wait_until
from tests.support.receiver import Receiver

pytestmark = pytest.mark.faults

EVENTS = 300
OUTAGE_S = 5.0
POOL_TIMEOUT_S = 2.0
# The longest any request may take, whatever the database does: the pool wait plus slack for a
# loaded 2-core machine.
ANSWER_BOUND_S = POOL_TIMEOUT_S + 3.0


@pytest.fixture
def pg_proxy(dsn: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the test's Postgres, and a DSN that goes through it."""
    params = conninfo_to_dict(dsn)
    proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))).start()
    params.update(host="127.0.0.1", port=str(proxy.port), connect_timeout="3")
    try:
        yield proxy, make_conninfo(**params)
    finally:
        proxy.stop()


def test_postgres_restart_under_load(
    db: psycopg.Connection,
    stack: Stack,
    crm_key: str,
    receiver: Receiver,
    pg_proxy: tuple[TcpProxy, str],
) -> None:
    """Fault: while events stream in and workers deliver, every connection to Postgres (web
    pool, worker pool, the worker's LISTEN session) is reset and new ones are refused for
    OUTAGE_S seconds, as when the database restarts; then it accepts again.

    Expected: the web answers 503 database_unavailable within the pool timeout (never hangs,
    never 500) while it is down and 202 again by itself after; clients that retry with their
    idempotency key get every event accepted once; the worker reconnects its pool and its
    LISTEN session by itself (an idle worker with a 30 s poll still wakes at once on the
    NOTIFY of a new event); every accepted event is delivered, none twice."""
    proxy, via_proxy = pg_proxy
    env = receiver_env(
        receiver,
        DB_POOL_TIMEOUT_S=str(POOL_TIMEOUT_S),
        LEASE_S="15",
        # Only NOTIFY (or its own retries) can wake this worker quickly.
        POLL_INTERVAL_S="30",
    )
    web = stack.web(dsn=via_proxy, DB_POOL_TIMEOUT_S=str(POOL_TIMEOUT_S))
    worker = stack.worker(dsn=via_proxy, **env)
    wait_for_worker(db, worker)
    load = Load(
        web.url("/events"), crm_key, n=EVENTS, prefix="pgrestart", rate_per_s=30,
        retry_for_s=30, timeout_s=15,
    ).start()
    wait_until(lambda: load.done >= EVENTS // 4, timeout_s=30)
    down_at = time.monotonic()
    dropped = proxy.down()
    assert wait_port_refused(proxy.port)
    time.sleep(OUTAGE_S)
    up_at = time.monotonic()
    proxy.up()
    load.wait(timeout_s=90)
    wait_settled(db, load, timeout_s=60)
    settled_at = time.monotonic()

    figures = reconcile(db, load, receiver.requests)
    tries = load.tries
    # Never a 500, never unanswered. A 200 is a retry whose first try was committed but
    # answered 503 (the connection died before the commit's reply reached the web): the
    # idempotency key makes the retry return the first event, not a second one.
    assert {t.status for t in tries} <= {200, 202, 503}, load.statuses()
    slowest = max(t.latency_s for t in tries)
    assert slowest < ANSWER_BOUND_S, f"a request took {slowest:.1f}s"
    during = [t for t in tries if down_at + 0.5 < t.started and t.started + t.latency_s < up_at]
    assert during and {t.status for t in during} == {503}, load.statuses()
    first_ok = min(
        t.started + t.latency_s for t in tries if t.status == 202 and t.started > up_at
    )
    web_recover_s = first_ok - up_at
    assert web_recover_s < 10
    assert figures["accepted"] == figures["stored"] == EVENTS
    assert figures["delivered"] == figures["deliveries"] == EVENTS * 3
    assert figures["duplicated"] == 0

    # The idle worker's LISTEN session came back: a new event is delivered well inside the
    # 30 s poll interval.
    before = len(receiver.requests)
    posted = time.monotonic()
    r = httpx.post(web.url("/events"), json=client_registered("pgrestart-late", 0),
                   headers={"Authorization": f"Bearer {crm_key}"}, timeout=10)
    assert r.status_code == 202, r.text
    receiver.wait_for(before + 3, timeout_s=10)
    wake_s = time.monotonic() - posted
    assert wake_s < 5

    refused = [line for line in stack.log_lines("db_unavailable")]
    assert refused and all(line["level"] == "ERROR" for line in refused)
    worker_saw = {line.get("action") for line in stack.log_lines()}
    assert "listen_failed" in worker_saw
    assert secrets_in(stack.log_text(), load) == []
    assert worker.terminate() == 0
    record(
        "test_postgres_restart_under_load",
        f"Postgres unreachable for {OUTAGE_S:g}s (connections reset, new ones refused)",
        {
            **figures,
            "connections_dropped": dropped,
            "answered_503": sum(1 for t in tries if t.status == 503),
            "committed_but_answered_503": sum(1 for t in tries if t.status == 200),
            "slowest_answer_s": round(slowest, 2),
            "web_recover_s": round(web_recover_s, 2),
            "drained_after_up_s": round(settled_at - up_at, 2),
            "idle_worker_wake_s": round(wake_s, 2),
        },
    )
