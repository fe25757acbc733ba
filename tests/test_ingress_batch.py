"""`POST /events/batch`: many events in one transaction, with POST /events' checks, fan-out,
idempotency, ordering keys and rate limit, item by item."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from carinho_outbox.records import BatchItem
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, running_worker
from tests.support.receiver import Receiver
from tests.support.samples import PAYLOADS, SOURCE_FOR
from tests.support.web import bearer, client, make_key

ALL_SOURCES = sorted(set(SOURCE_FOR.values()))


def counts(db: psycopg.Connection) -> tuple[int, int]:
    row = db.execute(
        "select (select count(*) from events), (select count(*) from deliveries)"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def item(event_type: str, key: str | None = None, **payload: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": event_type,
        "payload": {**PAYLOADS[event_type], **payload},
        "source": SOURCE_FOR[event_type],
    }
    if key is not None:
        doc["idempotency_key"] = key
    return doc


def payment(i: int, client_id: str | None = None) -> dict[str, Any]:
    return item(
        "payment.received",
        f"pay-{i}",
        payment_id=f"p-{i}",
        client_id=client_id or f"c-{i}",
    )


def fanout(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Every event with its deliveries, in the batch's order, without ids or times."""
    return db.execute(
        "select e.type, e.source, e.payload, e.client, d.destination, d.queue, d.priority,"
        "       d.status, d.due, d.mapping_version, d.ordering_key, d.attempts,"
        "       d.available_at - e.received_at > interval '1 second' as delayed"
        " from events e join deliveries d on d.event_id = e.id"
        " order by e.idempotency_key, d.destination"
    ).fetchall()


@pytest.fixture
def hub_key(dsn: str) -> str:
    # No rate limit: the limiter's own tests use keys of their own.
    return make_key(dsn, "hub-client", ALL_SOURCES, rate_per_s=0)


def test_fan_out_rows_equal_post_events_for_the_same_events(
    dsn: str, db: psycopg.Connection, hub_key: str
) -> None:
    # Every type of the catalog, twice. The samples share clients, services and phones, so
    # many items share an ordering key with an earlier one: one by one, those deliveries are
    # queued behind the first (not due); in one batch they must be too.
    types = sorted(PAYLOADS) * 2
    docs = [item(t, f"k{i:02d}") for i, t in enumerate(types)]
    with client(make_settings(), dsn) as c:
        singles = [c.post("/events", headers=bearer(hub_key), json=doc) for doc in docs]
        assert [r.status_code for r in singles] == [202] * len(docs), [r.text for r in singles]
        one_by_one = fanout(db)
        db.execute("truncate events cascade")
        batch = c.post("/events/batch", headers=bearer(hub_key), json={"events": docs})
    assert batch.status_code == 202, batch.text
    body = batch.json()
    assert body["accepted"] == len(docs) and body["duplicates"] == 0
    assert [r["index"] for r in body["results"]] == list(range(len(docs)))
    assert [r["deliveries"] for r in body["results"]] == [s.json()["deliveries"] for s in singles]
    assert all(r["duplicate"] is False for r in body["results"])
    assert fanout(db) == one_by_one
    assert len(one_by_one) == sum(len(s.json()["deliveries"]) for s in singles)
    # The ids answered are the ids stored, in request order.
    stored = dict(db.execute("select idempotency_key, id::text from events").fetchall())
    assert [r["event_id"] for r in body["results"]] == [stored[d["idempotency_key"]] for d in docs]


def test_one_invalid_item_refuses_the_batch_and_names_every_bad_item(
    dsn: str, db: psycopg.Connection, hub_key: str
) -> None:
    docs = [
        payment(0),
        {"payload": {}},  # no type
        item("lead.created", phone="123"),
        {"type": "nope.nope", "payload": {}},
        payment(4),
        {"type": "client.updated", "payload": PAYLOADS["client.updated"], "source": "crm",
         "occurred_at": "2026-01-01T10:00:00"},  # no time zone
        item("client.updated", "nul\x00key"),
    ]
    with client(make_settings(), dsn) as c:
        r = c.post("/events/batch", headers=bearer(hub_key), json={"events": docs})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert err["message"] == "5 of the 7 events are invalid; nothing was written"
    paths = [d["path"] for d in err["details"]]
    assert paths == [
        "events[1].type",
        "events[2].payload.phone",
        "events[3].type",
        "events[5].occurred_at",
        "events[6].idempotency_key",
    ]
    assert "123" not in r.text  # the rejected value is not echoed (it may be personal data)
    assert counts(db) == (0, 0)


def test_values_jsonb_refuses_are_named_and_a_surrogate_pair_is_fine(
    dsn: str, db: psycopg.Connection, hub_key: str
) -> None:
    """The body is scanned once for what jsonb refuses (NUL, lone surrogates, NaN); when the
    scan finds such bytes, every payload is walked so the 422 says which item and field."""
    def with_note(i: int, note: Any) -> dict[str, Any]:
        doc = payment(i)
        return {**doc, "payload": {**doc["payload"], "note": note}}

    headers = {**bearer(hub_key), "content-type": "application/json"}
    bad = b'{"events": [%s, %s, %s]}' % (
        json.dumps(with_note(0, "fine")).encode(),
        json.dumps(with_note(1, "a\x00b")).encode(),  # dumped as \u0000
        json.dumps(with_note(2, float("nan"))).encode(),  # dumped as NaN
    )
    emoji = json.dumps({"events": [with_note(3, "obrigada \U0001f600")]}).encode()
    assert b"\\ud83d" in emoji  # escaped as a surrogate pair: the scan cannot tell, the walk can
    with client(make_settings(), dsn) as c:
        refused = c.post("/events/batch", headers=headers, content=bad)
        ok = c.post("/events/batch", headers=headers, content=emoji)
    assert refused.status_code == 422, refused.text
    assert [d["path"] for d in refused.json()["error"]["details"]] == [
        "events[1].payload.note", "events[2].payload.note",
    ]
    assert ok.status_code == 202, ok.text
    stored = db.execute("select payload ->> 'note' from events").fetchall()
    assert stored == [("obrigada \U0001f600",)]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"events": []}, 422, "the batch is empty"),
        ({"events": {"type": "x"}}, 422, 'the body must be {"events": [...]}'),
        ([payment(0)], 422, 'the body must be {"events": [...]}'),
        ({"events": [payment(i) for i in range(4)]}, 413,
         "a batch holds at most 3 events (INGEST_BATCH_MAX); this one has 4"),
    ],
)
def test_shape_and_size_limits(
    dsn: str, db: psycopg.Connection, hub_key: str, body: Any, status: int, message: str
) -> None:
    with client(make_settings(INGEST_BATCH_MAX="3"), dsn) as c:
        r = c.post("/events/batch", headers=bearer(hub_key), json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"] == message
    assert r.json()["error"]["details"][0]["path"] == "events"
    assert counts(db) == (0, 0)


def test_body_limit_is_the_batch_one_and_a_full_default_batch_fits(
    dsn: str, db: psycopg.Connection
) -> None:
    hub_key = make_key(dsn, "bulk", ["financeiro"], rate_per_s=0)  # limits tested elsewhere
    pad = "x" * 400  # an unknown field is kept as sent: ~650 bytes per event
    full = {"events": [{**payment(i), "payload": {**payment(i)["payload"], "memo": pad}}
                       for i in range(500)]}
    body = json.dumps(full).encode()
    size = len(body)
    headers = {**bearer(hub_key), "content-type": "application/json"}
    settings = make_settings()
    assert size > settings.max_body_bytes  # POST /events' limit would refuse it
    with client(settings, dsn) as c:
        ok = c.post("/events/batch", headers=headers, content=body)
    assert ok.status_code == 202, ok.text
    assert ok.json()["accepted"] == 500
    assert counts(db) == (500, 1000)
    small = make_settings(INGEST_BATCH_MAX_BODY_BYTES=str(size - 1))
    with client(small, dsn) as c:
        refused = c.post("/events/batch", headers=headers, content=body)
        too_many = c.post(
            "/events/batch", headers=bearer(hub_key),
            json={"events": [payment(i + 2000) for i in range(501)]},
        )
    assert refused.status_code == 413  # the very same body, one byte over
    assert refused.json()["error"]["code"] == "payload_too_large"
    assert too_many.status_code == 413
    assert "at most 500 events" in too_many.json()["error"]["message"]
    assert counts(db) == (500, 1000)


def test_duplicates_inside_the_batch_and_across_requests(
    dsn: str, db: psycopg.Connection, hub_key: str
) -> None:
    a, b = payment(1), payment(2)
    with client(make_settings(), dsn) as c:
        first = c.post("/events/batch", headers=bearer(hub_key), json={"events": [a, b, a]})
        single = c.post("/events", headers=bearer(hub_key), json=b)
        again = c.post("/events/batch", headers=bearer(hub_key), json={"events": [a, b, a]})
        mixed = c.post(
            "/events/batch", headers=bearer(hub_key), json={"events": [payment(3), b, payment(3)]}
        )
        # A key first sent through POST /events is a duplicate for a batch too.
        later = c.post("/events", headers=bearer(hub_key), json=payment(4))
        after = c.post("/events/batch", headers=bearer(hub_key), json={"events": [payment(4)]})
    assert first.status_code == 202
    one = first.json()
    assert (one["accepted"], one["duplicates"]) == (2, 1)
    r0, r1, r2 = one["results"]
    assert r2 == {**r0, "index": 2, "duplicate": True}
    assert r0["event_id"] != r1["event_id"]
    # POST /events sees the batch's event as the first one.
    assert single.status_code == 200
    assert single.json() == {
        "event_id": r1["event_id"], "deliveries": r1["deliveries"], "duplicate": True,
    }
    # The whole batch again (a client retrying): 200, every item the first event.
    assert again.status_code == 200
    assert again.json() == {
        "accepted": 0,
        "duplicates": 3,
        "results": [{**r, "duplicate": True} for r in one["results"]],
    }
    assert mixed.status_code == 202
    m0, m1, m2 = mixed.json()["results"]
    assert (m0["duplicate"], m1["duplicate"], m2["duplicate"]) == (False, True, True)
    assert m1["event_id"] == r1["event_id"] and m2["event_id"] == m0["event_id"]
    assert after.status_code == 200
    assert after.json()["results"][0]["event_id"] == later.json()["event_id"]
    assert counts(db) == (4, 8)


def test_concurrent_batches_sharing_keys_in_any_order_write_each_key_once(
    dsn: str, db: psycopg.Connection, hub_key: str
) -> None:
    docs = [payment(i) for i in range(40)]
    orders = [docs, list(reversed(docs)), docs[20:] + docs[:20], docs[::2] + docs[1::2]] * 3
    with client(make_settings(), dsn) as c, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(
            lambda batch: c.post("/events/batch", headers=bearer(hub_key),
                                 json={"events": batch}),
            orders,
        ))
    assert all(r.status_code in (200, 202) for r in answers), [
        (r.status_code, r.text[:300]) for r in answers if r.status_code not in (200, 202)
    ]
    assert sum(r.json()["accepted"] for r in answers) == 40
    ids: dict[str, set[str]] = {}
    for batch, r in zip(orders, answers, strict=True):
        for doc, res in zip(batch, r.json()["results"], strict=True):
            ids.setdefault(doc["idempotency_key"], set()).add(res["event_id"])
    assert all(len(v) == 1 for v in ids.values())
    assert counts(db) == (40, 80)


def test_same_ordering_key_in_one_batch_only_the_first_is_due(
    dsn: str, db: psycopg.Connection, hub_key: str
) -> None:
    # payment.received orders by client_id: three for c-A, one for c-B, in between.
    docs = [payment(1, "c-A"), payment(2, "c-B"), payment(3, "c-A"), payment(4, "c-A")]
    with client(make_settings(), dsn) as c:
        r = c.post("/events/batch", headers=bearer(hub_key), json={"events": docs})
        # A later request with the same key queues behind the batch's pending ones.
        later = c.post(
            "/events/batch", headers=bearer(hub_key), json={"events": [payment(5, "c-B")]}
        )
    assert r.status_code == 202 and later.status_code == 202
    rows = db.execute(
        "select e.idempotency_key, d.destination, d.ordering_key, d.due from deliveries d"
        " join events e on e.id = d.event_id order by d.id"
    ).fetchall()
    assert rows == [
        ("pay-1", "crm", "client_id:c-A", True),
        ("pay-1", "operacao", "client_id:c-A", True),
        ("pay-2", "crm", "client_id:c-B", True),
        ("pay-2", "operacao", "client_id:c-B", True),
        ("pay-3", "crm", "client_id:c-A", False),
        ("pay-3", "operacao", "client_id:c-A", False),
        ("pay-4", "crm", "client_id:c-A", False),
        ("pay-4", "operacao", "client_id:c-A", False),
        ("pay-5", "crm", "client_id:c-B", False),
        ("pay-5", "operacao", "client_id:c-B", False),
    ]


def test_auth_scope_and_error_contract_write_nothing(
    dsn: str, db: psycopg.Connection, hub_key: str
) -> None:
    crm_only = make_key(dsn, "crm-only", ["crm"])
    revoked = make_key(dsn, "old", ["crm"])
    db.execute("update api_keys set revoked_at = now() where name = 'old'")
    crm_item = item("client.updated", "c1")
    fin_item = item("payment.received", "p1")
    with client(make_settings(), dsn) as c:
        cases = {
            "no key": c.post("/events/batch", json={"events": [crm_item]}),
            "bad key": c.post("/events/batch", json={"events": [crm_item]},
                              headers=bearer("co_wrong")),
            "revoked": c.post("/events/batch", json={"events": [crm_item]},
                              headers=bearer(revoked)),
            "scope": c.post("/events/batch", headers=bearer(crm_only),
                            json={"events": [crm_item, fin_item, {**fin_item, "source": None}]}),
            "malformed": c.post("/events/batch", content=b'{"events": [', headers={
                **bearer(hub_key), "content-type": "application/json"}),
            "not json": c.post("/events/batch", content=b"events=1", headers={
                **bearer(hub_key), "content-type": "application/x-www-form-urlencoded"}),
        }
    got = {k: v.status_code for k, v in cases.items()}
    assert got == {"no key": 401, "bad key": 401, "revoked": 401, "scope": 403,
                   "malformed": 400, "not json": 415}
    scope = cases["scope"].json()["error"]
    assert scope["code"] == "forbidden"
    assert [d["path"] for d in scope["details"]] == ["events[1].source", "events[2].source"]
    assert "nothing was written" in scope["message"]
    assert counts(db) == (0, 0)


def test_rate_limit_spends_one_token_per_event(dsn: str, db: psycopg.Connection) -> None:
    key = make_key(dsn, "metered", ["financeiro"], rate_per_s=0.01, burst=10)
    with client(make_settings(), dsn) as c:
        four = c.post("/events/batch", headers=bearer(key),
                      json={"events": [payment(i) for i in range(4)]})
        # 6 tokens left: a batch of 7 is refused whole and takes nothing.
        seven = c.post("/events/batch", headers=bearer(key),
                       json={"events": [payment(i) for i in range(10, 17)]})
        six = c.post("/events/batch", headers=bearer(key),
                     json={"events": [payment(i) for i in range(20, 26)]})
        # Empty bucket: refused before the body is read (an unparseable one proves it).
        empty = c.post("/events/batch", content=b"{not json",
                       headers={**bearer(key), "content-type": "application/json"})
        single = c.post("/events", headers=bearer(key), json=payment(30))
    assert four.status_code == 202 and four.headers["RateLimit-Remaining"] == "6"
    assert seven.status_code == 429
    assert seven.json()["error"]["code"] == "rate_limited"
    assert "needs 7 tokens" in seven.json()["error"]["message"]
    assert 90 <= int(seven.headers["Retry-After"]) <= 100  # one more token at 0.01/s
    assert six.status_code == 202 and six.headers["RateLimit-Remaining"] == "0"
    assert empty.status_code == 429 and single.status_code == 429
    assert counts(db) == (10, 20)


def test_a_batch_larger_than_the_burst_passes_from_a_full_bucket_and_leaves_a_debt(
    dsn: str, db: psycopg.Connection
) -> None:
    key = make_key(dsn, "small-burst", ["financeiro"], rate_per_s=0.1, burst=5)
    with client(make_settings(), dsn) as c:
        big = c.post("/events/batch", headers=bearer(key),
                     json={"events": [payment(i) for i in range(8)]})
        after = c.post("/events/batch", headers=bearer(key), json={"events": [payment(9)]})
    assert big.status_code == 202, big.text
    assert big.headers["RateLimit-Remaining"] == "0"
    # 3 tokens owed, then 5 to fill: 80 s at 0.1/s.
    assert 79 <= int(big.headers["RateLimit-Reset"]) <= 80
    assert after.status_code == 429
    assert 39 <= int(after.headers["Retry-After"]) <= 40  # back to one token
    assert counts(db) == (8, 16)


def test_access_log_shows_the_count_not_the_payloads(
    dsn: str, hub_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    docs = [item("lead.created", f"l{i}", phone=f"+55419999{i:05d}") for i in range(3)]
    with caplog.at_level(logging.INFO, logger="carinho_outbox.access"), \
            client(make_settings(), dsn) as c:
        r = c.post("/events/batch", headers=bearer(hub_key), json={"events": docs})
    assert r.status_code == 202
    lines = [rec for rec in caplog.records if rec.name == "carinho_outbox.access"]
    batch_line = next(rec for rec in lines if rec.__dict__.get("path") == "/events/batch")
    assert batch_line.__dict__["event_count"] == 3
    assert batch_line.__dict__["status"] == 202
    logged = json.dumps([rec.__dict__ for rec in lines], default=str)
    assert "99990000" not in logged and "Maria" not in logged


async def test_store_batch_returns_queues_and_notifies_only_when_asked(
    store: Store, dsn: str
) -> None:
    items = [
        BatchItem("payment.received", "financeiro", {**PAYLOADS["payment.received"],
                                                     "client_id": f"q{i}"}, None, None, None)
        for i in range(3)
    ]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
        await listener.execute("listen carinho_outbox")
        quiet, queues = await store.ingest_batch(items, request_id=None, client="t", notify=False)
        loud, loud_queues = await store.ingest_batch(items, request_id=None, client="t")
        got: list[str] = []

        async def drain() -> None:
            async for n in listener.notifies(timeout=0.5):
                got.append(n.payload)

        await drain()
    assert len(quiet) == len(loud) == 3
    assert queues == loud_queues and queues
    assert sorted(got) == sorted(loud_queues)  # one per queue, from the notifying call only


@pytest.mark.slow
async def test_a_batch_of_500_is_delivered_end_to_end_in_key_order(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    key = await asyncio.to_thread(make_key, dsn, "bulk", ["financeiro"], rate_per_s=0)
    # 500 payments over 50 clients: each client's ten must reach each destination in order.
    docs = [payment(i, f"c-{i % 50}") for i in range(500)]
    dests = {f"DEST_{d.upper()}_URL": receiver.url(f"/{d}") for d in ("crm", "operacao")}
    settings = make_settings(**dests)

    def post() -> Any:
        with client(settings, dsn) as c:
            return c.post("/events/batch", headers=bearer(key), json={"events": docs})

    r = await asyncio.to_thread(post)
    assert r.status_code == 202 and r.json()["accepted"] == 500
    async with running_worker(settings, store, dsn):
        await asyncio.to_thread(receiver.wait_for, 1000, 60.0)
        await eventually(
            lambda: db.execute(
                "select count(*) from deliveries where status = 'delivered'"
            ).fetchone() == (1000,),
            timeout_s=30,
        )
    assert len(receiver.requests) == 1000  # none twice
    seen: dict[tuple[str, str], list[int]] = {}
    for req in receiver.requests:
        data = req.json["data"]
        seen.setdefault((req.path, data["client_id"]), []).append(int(data["payment_id"][2:]))
    assert len(seen) == 100
    assert all(v == sorted(v) and len(v) == 10 for v in seen.values())


def test_batch_statement_stays_within_psycopg_parse_cache() -> None:
    """psycopg re-parses (regex over the text) every statement longer than this on every
    call: ~1 ms a batch, paid for a comment."""
    from psycopg import _queries

    from carinho_outbox.queries import q

    text = q("ingest_batch").as_string(None)
    assert len(text.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH
