"""The database turns read-only under load (a failover to a standby, an operator freezing
writes; Postgres answers a full disk the same way for writes: an error per statement)."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.faults.support import (
    Load,
    Stack,
    receiver_env,
    reconcile,
    record,
    secrets_in,
    wait_for_worker,
    wait_settled,
)
from tests.support.procs import wait_until
from tests.support.receiver import Receiver

pytestmark = pytest.mark.faults

EVENTS = 240
READ_ONLY_S = 4.0


def set_read_only(db: psycopg.Connection, dbname: str, on: bool) -> int:
    """Flip the database default and end every other session, so that the pools reconnect
    under the new default (how a failover looks to a client); returns sessions ended."""
    stmt = "alter database {} set default_transaction_read_only = on" if on else (
        "alter database {} reset default_transaction_read_only")
    db.execute(sql.SQL(stmt).format(sql.Identifier(dbname)))
    rows = db.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity "
        "where datname = %s and pid <> pg_backend_pid()",
        (dbname,),
    ).fetchall()
    return len(rows)


def test_read_only_database_answers_503_logs_why_and_recovers(
    dsn: str, db: psycopg.Connection, stack: Stack, crm_key: str, receiver: Receiver
) -> None:
    """Fault: mid-load the database starts refusing writes (default_transaction_read_only on,
    sessions re-established), for READ_ONLY_S seconds; then writes are allowed again.

    Expected: POST /events answers 503 (never 500) and the web logs an ERROR naming the cause
    (ReadOnlySqlTransaction, "refuses writes"); the worker logs its failed claims and keeps
    trying; after the revert both recover by themselves, clients retrying with their
    idempotency key get every event accepted once, and every delivery is delivered."""
    dbname = str(conninfo_to_dict(dsn)["dbname"])
    env = receiver_env(receiver, LEASE_S="15")
    web = stack.web()
    worker = stack.worker(**env)
    wait_for_worker(db, worker)
    load = Load(web.url("/events"), crm_key, n=EVENTS, prefix="ro", rate_per_s=30,
                retry_for_s=30).start()
    wait_until(lambda: load.done >= EVENTS // 4, timeout_s=30)
    try:
        ro_at = time.monotonic()
        ended = set_read_only(db, dbname, True)
        time.sleep(READ_ONLY_S)
    finally:
        rw_at = time.monotonic()
        set_read_only(db, dbname, False)
    load.wait(timeout_s=90)
    wait_settled(db, load, timeout_s=60)
    settled_at = time.monotonic()

    tries = load.tries
    assert {t.status for t in tries} <= {200, 202, 503}, load.statuses()
    during = [t for t in tries if ro_at + 0.5 < t.started and t.started + t.latency_s < rw_at]
    assert during and {t.status for t in during} == {503}, load.statuses()
    first_ok = min(t.started + t.latency_s for t in tries if t.status == 202 and t.started > rw_at)
    recover_s = first_ok - rw_at
    assert recover_s < 10
    figures = reconcile(db, load, receiver.requests)
    assert figures["accepted"] == figures["stored"] == EVENTS
    assert figures["delivered"] == figures["deliveries"] == EVENTS * 3

    web_lines = [x for x in stack.log_lines("db_unavailable")
                 if x.get("cause") == "ReadOnlySqlTransaction"]
    assert web_lines and all(x["level"] == "ERROR" for x in web_lines)
    assert "refuses writes" in web_lines[0]["message"]
    worker_lines = [x for x in stack.log_lines("claim_failed")
                    if "ReadOnlySqlTransaction" in x["message"]]
    assert worker_lines
    assert stack.log_lines("unhandled") == []
    assert secrets_in(stack.log_text(), load) == []
    assert worker.terminate() == 0
    record(
        "test_read_only_database_answers_503_logs_why_and_recovers",
        f"database read-only for {READ_ONLY_S:g}s (default_transaction_read_only)",
        {
            **figures,
            "sessions_ended": ended,
            "answered_503": sum(1 for t in tries if t.status == 503),
            "committed_but_answered_503": sum(1 for t in tries if t.status == 200),
            "web_recover_s": round(recover_s, 2),
            "drained_after_revert_s": round(settled_at - rw_at, 2),
        },
    )
