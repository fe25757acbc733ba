"""How the worker amortises its database work (issue 7): claims and outcome writes in batches,
a fixed set of lanes instead of a task per delivery, the promoter only when a key is unblocked,
and an outcome write that a destination's bytes cannot wedge."""

from __future__ import annotations

import asyncio

import psycopg

from carinho_outbox.records import Outcome, SendResult
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, ingest, running_worker
from tests.support.receiver import Receiver, Reply
from tests.test_engine import dest_env, statuses

CRM_ONLY = "payment.failed"  # routed to crm alone (critical queue), identity mapping


async def test_a_backlog_is_claimed_in_batches_by_a_fixed_set_of_lanes(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    n = 300
    for i in range(n):
        await ingest(store, CRM_ONLY, {"client_id": f"c-{i}", "payment_id": f"p-{i}"}, "crm")
    assert statuses(db) == {"pending": n}
    settings = make_settings(**dest_env(receiver, ("crm",)), WORKER_CONCURRENCY="100",
                             WORKER_BATCH_SIZE="100")
    loop = asyncio.get_running_loop()
    created = {"tasks": 0}

    def counting_factory(lp, coro, **kw):  # type: ignore[no-untyped-def]
        created["tasks"] += 1
        return asyncio.Task(coro, loop=lp, **kw)

    loop.set_task_factory(counting_factory)
    try:
        async with running_worker(settings, store, dsn) as worker:
            await eventually(lambda: statuses(db).get("delivered") == n, timeout_s=60)
            await eventually(lambda: worker.processed == n)
    finally:
        loop.set_task_factory(None)
    assert sorted(int(r.headers["webhook-id"][4:]) for r in receiver.requests) == sorted(
        r[0] for r in db.execute("select id from deliveries"))
    # A claim asks for half the lanes or more (the first one for all of them) and only the
    # last can come back short: 300 rows, 7 claims at most. Per delivery there is neither a
    # statement nor a task.
    assert 3 <= worker.claims <= 7, worker.claims
    assert worker.flushes < n
    # The lanes, the helpers and one task per claim, not one per delivery (that made 300).
    assert created["tasks"] < 100 + 60, created


async def test_finishing_a_keyed_delivery_says_whether_a_successor_waits(
    dsn: str, store: Store, db: psycopg.Connection
) -> None:
    async def event(key: str, n: int) -> None:
        await store.ingest_event(
            type=CRM_ONLY, source="crm", payload={"client_id": key, "payment_id": f"p-{n}"},
            idempotency_key=None, occurred_at=None, request_id=None, client="t",
            ordering_key=f"client_id:{key}")

    await event("a", 1)
    await event("a", 2)  # waits behind the first: not due
    await event("b", 1)  # alone
    assert db.execute("select ordering_key, due from deliveries order by id").fetchall() == [
        ("client_id:a", True), ("client_id:a", False), ("client_id:b", True)]
    jobs = await store.claim(worker="W", destinations=["crm"], queues=["critical", "default",
                             "low"], limit=10, lease_s=30)
    by_key = {j.ordering_key: j for j in jobs}
    assert sorted(by_key) == ["client_id:a", "client_id:b"]
    ok = SendResult(ok=True, http_status=200)

    kept, unblocks = await store.finish_outcomes(
        worker="W", outcomes=[Outcome(job=by_key["client_id:b"], status="delivered", result=ok)])
    assert (kept, unblocks) == ({by_key["client_id:b"].id}, False)
    # A retry keeps its successor blocked: nothing to promote.
    retry = Outcome(job=by_key["client_id:a"], status="pending", delay_s=0.0,
                    result=SendResult(ok=False, http_status=503, error="HTTP 503"))
    kept, unblocks = await store.finish_outcomes(worker="W", outcomes=[retry])
    assert (kept, unblocks) == ({by_key["client_id:a"].id}, False)
    [again] = await store.claim(worker="W", destinations=["crm"], queues=["critical", "default",
                                "low"], limit=10, lease_s=30)
    assert again.id == by_key["client_id:a"].id
    kept, unblocks = await store.finish_outcomes(
        worker="W", outcomes=[Outcome(job=again, status="delivered", result=ok)])
    assert (kept, unblocks) == ({again.id}, True)
    assert await store.promote_due() == ["critical"]
    assert db.execute("select count(*) from deliveries where due and status = 'pending'"
                      ).fetchone() == (1,)


async def test_a_nul_in_an_answer_is_recorded_not_wedging_the_flush(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = lambda _r, _n: Reply(status=400, body='{"error":"bad\\u0000byte"}\x00!')
    settings = make_settings(**dest_env(receiver, ("crm",)))
    await ingest(store, CRM_ONLY, {"client_id": "c-1", "payment_id": "p-1"}, "crm")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: statuses(db) == {"dead": 1})
    row = db.execute("select response_status, response_body from webhook_deliveries").fetchone()
    assert row == (400, '{"error":"bad\\u0000byte"}\ufffd!')
