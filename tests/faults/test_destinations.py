"""Destinations that misbehave: too slow, resetting connections, 500 and 429 with Retry-After,
2xx after our timeout, and down for longer than the whole retry window."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.faults.support import (
    Load,
    Stack,
    dest_env,
    reconcile,
    record,
    secrets_in,
    wait_for_worker,
    wait_settled,
)
from tests.faults.tcpproxy import TcpProxy
from tests.support.procs import wait_until
from tests.support.receiver import Received, Receiver, Reply

pytestmark = pytest.mark.faults

REQUEST_TIMEOUT_S = 1.0
RETRY_AFTER_S = 2


@pytest.fixture
def proxy_to(receiver: Receiver) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", receiver.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def attempts_by_delivery(db: psycopg.Connection, destination: str) -> dict[int, list[tuple]]:
    rows = db.execute(
        "select w.delivery_id, w.outcome, w.response_status, w.error from webhook_deliveries w "
        "where w.destination = %s order by w.delivery_id, w.attempt",
        (destination,),
    ).fetchall()
    out: dict[int, list[tuple]] = collections.defaultdict(list)
    for did, *rest in rows:
        out[did].append(tuple(rest))
    return out


def test_slow_resetting_and_throttling_destinations(
    db: psycopg.Connection,
    stack: Stack,
    crm_key: str,
    receiver: Receiver,
    proxy_to: TcpProxy,
) -> None:
    """Fault, one per destination, all at once:
    - crm answers 200, but only after REQUEST_TIMEOUT_S, on the first try of each delivery (the
      destination did the work, the hub saw a read timeout);
    - financeiro sits behind a proxy that resets connections: some before the request reaches
      it, some after it has answered (the answer never reaches the hub);
    - marketing answers 500 to the first try and 429 with `Retry-After: 2` to the second.

    Expected: every timeout and reset is a retry (never a dead letter); the retries of crm and
    of the reset-after-answer connections are duplicates at the destination (at-least-once),
    same webhook-id, counted here; the Retry-After is honoured (the third try comes at least
    2 s after the 429, though the backoff alone is 0.1-0.2 s); all delivered in the end."""
    tries: collections.Counter[str] = collections.Counter()

    def script(r: Received, _n: int) -> Reply:
        wid = r.headers["webhook-id"]
        tries[wid] += 1
        if r.path == "/crm" and tries[wid] == 1:
            return Reply(status=200, delay_s=REQUEST_TIMEOUT_S + 0.5)
        if r.path == "/marketing" and tries[wid] == 1:
            return Reply(status=500, body='{"error":"boom"}')
        if r.path == "/marketing" and tries[wid] == 2:
            return Reply(status=429, headers={"Retry-After": str(RETRY_AFTER_S)})
        return Reply()

    receiver.script = script
    n = 60
    env = dest_env(
        {
            "crm": receiver.url("/crm"),
            "financeiro": f"http://127.0.0.1:{proxy_to.port}/financeiro",
            "marketing": receiver.url("/marketing"),
        },
        REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
        LEASE_S="5",
        RETRY_BASE_S="0.1",
        RETRY_CAP_S="0.2",
        MAX_ATTEMPTS="10",
    )
    resets_before, resets_after = 15, 15
    proxy_to.reset_next(resets_before)
    web = stack.web()
    worker = stack.worker(**env)
    wait_for_worker(db, worker)
    load = Load(web.url("/events"), crm_key, n=n, prefix="dest", rate_per_s=30).start()
    wait_until(lambda: proxy_to.resets >= resets_before, timeout_s=30)
    proxy_to.reset_next(resets_after, after_reply=True)
    load.wait(timeout_s=30)
    recover_s = wait_settled(db, load, timeout_s=60)
    figures = reconcile(db, load, receiver.requests)
    assert figures["accepted"] == n
    assert figures["delivered"] == figures["deliveries"] == n * 3
    assert figures["dead_lettered"] == 0
    assert proxy_to.resets == resets_before + resets_after
    taken = collections.Counter(
        (r.path, r.headers["webhook-id"]) for r in receiver.requests if r.answered == 200)
    by_path = collections.Counter(p for (p, _), c in taken.items() for _ in range(c - 1))
    # The crm timeouts and the resets after an answer, nothing else.
    assert by_path == {"/crm": n, "/financeiro": resets_after}, by_path

    crm = attempts_by_delivery(db, "crm")
    assert len(crm) == n
    for history in crm.values():
        assert [h[:2] for h in history] == [("retry", None), ("delivered", 200)]
        assert history[0][2].startswith("timeout: no complete answer within"), history
    seen = collections.Counter((r.path, r.headers["webhook-id"]) for r in receiver.requests)
    crm_dupes = sum(c - 1 for (p, _), c in seen.items() if p == "/crm")
    assert crm_dupes == n  # every one of them was received twice

    fin = attempts_by_delivery(db, "financeiro")
    errors = [e for h in fin.values() for (o, _s, e) in h if o == "retry"]
    assert len(errors) == resets_before + resets_after
    assert all(e.startswith("connection error") for e in errors), errors
    fin_dupes = sum(c - 1 for (p, _), c in seen.items() if p == "/financeiro")
    # A reset after the answer means the destination had the request: a duplicate. A reset
    # before it never reached the destination.
    assert fin_dupes == resets_after

    mkt = attempts_by_delivery(db, "marketing")
    for history in mkt.values():
        assert [(o, s) for o, s, _e in history] == [
            ("retry", 500), ("retry", 429), ("delivered", 200)]
    at = collections.defaultdict(list)
    for r in receiver.requests:
        if r.path == "/marketing":
            at[r.headers["webhook-id"]].append(r.at)
    waits = [times[2] - times[1] for times in at.values()]
    assert min(waits) >= RETRY_AFTER_S - 0.05, min(waits)
    after_500 = sorted(times[1] - times[0] for times in at.values())

    assert secrets_in(stack.log_text(), load) == []
    assert worker.terminate() == 0
    record(
        "test_slow_resetting_and_throttling_destinations",
        "destinations: 2xx after the timeout (crm), connection resets (financeiro), "
        "500 then 429 Retry-After (marketing)",
        {
            **figures,
            "timeouts": n,
            "resets_before_request": resets_before,
            "resets_after_answer": resets_after,
            "shortest_wait_after_429_s": round(min(waits), 2),
            "median_wait_after_500_s": round(after_500[len(after_500) // 2], 2),
            "recover_s": round(recover_s, 2),
        },
    )


def test_destination_down_past_the_retry_window_then_reprocessed(
    db: psycopg.Connection,
    stack: Stack,
    crm_key: str,
    admin_key: str,
    receiver: Receiver,
    proxy_to: TcpProxy,
) -> None:
    """Fault: every destination refuses connections for longer than the whole retry window
    (MAX_ATTEMPTS=3, backoff capped at 0.3 s).

    Expected: each delivery is tried exactly 3 times and dead-lettered with the connection
    error as its reason (nothing lost, nothing stuck); GET /dlq/stats counts them all; once
    the destination is back, one POST /dlq/reprocess puts them all back and each reaches the
    destination exactly once."""
    n = 40
    proxy_to.down()
    env = dest_env(
        {name: f"http://127.0.0.1:{proxy_to.port}/{name}"
         for name in ("crm", "financeiro", "marketing")},
        RETRY_BASE_S="0.1",
        RETRY_CAP_S="0.3",
        MAX_ATTEMPTS="3",
    )
    web = stack.web()
    worker = stack.worker(**env)
    wait_for_worker(db, worker)
    load = Load(web.url("/events"), crm_key, n=n, prefix="dlq", rate_per_s=40).start()
    load.wait(timeout_s=30)
    wait_settled(db, load, timeout_s=60)
    dead = reconcile(db, load, receiver.requests)
    assert dead["dead_lettered"] == dead["deliveries"] == n * 3
    reasons = db.execute(
        "select distinct attempts, split_part(last_error, ':', 1) from deliveries"
    ).fetchall()
    assert reasons == [(3, "connection error")]
    admin = {"Authorization": f"Bearer {admin_key}"}
    stats = httpx.get(web.url("/dlq/stats"), headers=admin, timeout=10).json()
    assert stats["size"] == n * 3
    assert receiver.requests == []

    proxy_to.up()
    started = time.monotonic()
    r = httpx.post(web.url("/dlq/reprocess"), headers=admin, json={"all": True}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["reprocessed"] == n * 3
    recover_s = wait_settled(db, load, timeout_s=60)
    assert time.monotonic() - started < 30
    figures = reconcile(db, load, receiver.requests)
    assert figures["delivered"] == n * 3 and figures["duplicated"] == 0
    assert len(receiver.requests) == n * 3
    assert db.execute("select distinct reprocessed from deliveries").fetchall() == [(1,)]
    assert secrets_in(stack.log_text(), load, admin_key) == []
    assert worker.terminate() == 0
    record(
        "test_destination_down_past_the_retry_window_then_reprocessed",
        "destinations refuse connections past MAX_ATTEMPTS -> DLQ -> POST /dlq/reprocess",
        {
            **figures,
            "dead_lettered_before_reprocess": dead["dead_lettered"],
            "reprocessed": r.json()["reprocessed"],
            "recover_s": round(recover_s, 2),
        },
    )

