"""`POST /webhooks/whatsapp`: Z-API callbacks through the real app into the real database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from carinho_outbox import signing
from carinho_outbox.settings import Settings
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.web import client

TOKEN = "zapi-webhook-token-0123456789abcdef"
INSTANCE = "instance.id"
MSG_ID = "A20DA9C0183A2D35A260F53F5D2B9244"
STATUS_ID = "999999999999999999999"
PHONE = "+5544999999999"
LID = "81896604192873@lid"


def _fixtures_dir() -> Path:
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "zapi"
    for candidate in (beside_repo, Path("/work/shared/fixtures/zapi")):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"Z-API fixtures not found (looked in {beside_repo})")


FIXTURES = _fixtures_dir()


def load(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    if "instanceId" in data:
        # The samples name two different instances; ours is the configured one.
        data["instanceId"] = INSTANCE
    return data


def wa_settings(**env: str) -> Settings:
    return make_settings(ZAPI_WEBHOOK_TOKEN=TOKEN, ZAPI_INSTANCE_ID=INSTANCE, **env)


def counts(db: psycopg.Connection) -> tuple[int, int, int]:
    row = db.execute(
        "select (select count(*) from events), (select count(*) from deliveries),"
        " (select count(*) from leads)"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def routed(db: psycopg.Connection, event_type: str) -> list[str]:
    """The destinations the routing table gives a type: the HTTP ones of DESIGN.md §4 plus any
    channel an automation adds (lead.created → a WhatsApp greeting)."""
    return [d for (d,) in db.execute(
        "select destination from routes where event_type = %s and enabled order by destination",
        (event_type,),
    )]


def pair_deliveries(db: psycopg.Connection) -> int:
    """Deliveries of one new contact's first message: whatsapp.inbound + lead.created."""
    return len(routed(db, "whatsapp.inbound")) + len(routed(db, "lead.created"))


def sent_delivery(db: psycopg.Connection, external_id: str) -> int:
    """An outbound WhatsApp send the worker already handed to Z-API."""
    row = db.execute(
        "insert into events (type, source, payload) values ('lead.created', 'site', '{}')"
        " returning id"
    ).fetchone()
    assert row is not None
    delivery = db.execute(
        "insert into deliveries (event_id, destination, status, external_id, finished_at)"
        " values (%s, 'whatsapp', 'delivered', %s, now()) returning id",
        (row[0], external_id),
    ).fetchone()
    assert delivery is not None
    return int(delivery[0])


def channel(db: psycopg.Connection, delivery_id: int) -> tuple[Any, ...]:
    row = db.execute(
        "select status, channel_status, channel_error from deliveries where id = %s",
        (delivery_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


INBOUND = sorted(p.name for p in FIXTURES.glob("received-*.json"))
STATUS = {
    "message-status-sent.json": "SENT",
    "message-status-received.json": "RECEIVED",
    "message-status-read.json": "READ",
    "message-status-played.json": "PLAYED",
    "message-status-read-by-me.json": "READ_BY_ME",
}
DELIVERY = {
    "delivery-callback.json": (MSG_ID, "SENT", None),
    "delivery-callback-v2-success.json": ("A800FB3697F1DE58C48D", "SENT", None),
    "delivery-callback-v2-error.json": (MSG_ID, "FAILED", "Phone number does not exist"),
}
IGNORED = {
    "disconnected-callback.json": "disconnected",
    **{
        p.name: "missing_fields"
        for p in FIXTURES.glob("*.json")
        if p.name.startswith(("error-", "send-"))
    },
}


def test_the_fixture_table_covers_every_sample() -> None:
    every = {p.name for p in FIXTURES.glob("*.json")}
    assert every == set(INBOUND) | set(STATUS) | set(DELIVERY) | set(IGNORED)


@pytest.mark.parametrize("name", INBOUND)
def test_every_received_sample_becomes_one_inbound_event_and_a_lead(
    dsn: str, db: psycopg.Connection, name: str
) -> None:
    with client(wa_settings(), dsn) as c:
        r = c.post(f"/webhooks/whatsapp/{TOKEN}", json=load(name))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "accepted" and body["lead_created"] is True
    events = db.execute(
        "select type, source, client, payload from events order by type desc"
    ).fetchall()
    assert [(t, s, c) for t, s, c, _ in events] == [
        ("whatsapp.inbound", "zapi", "zapi-webhook"),
        ("lead.created", "whatsapp", "zapi-webhook"),
    ]
    inbound, lead = events[0][3], events[1][3]
    assert inbound["phone"] == PHONE and inbound["message_id"] == MSG_ID
    assert inbound["lead_id"] == lead["lead_id"] == body["lead_id"]
    assert any(k in inbound for k in ("text", "button_id", "list_id", "media"))
    assert lead["phone"] == PHONE and lead["channel"] == "whatsapp"
    destinations = db.execute(
        "select e.type, array_agg(d.destination order by d.destination) from deliveries d"
        " join events e on e.id = d.event_id group by e.type order by e.type"
    ).fetchall()
    assert destinations == [
        ("lead.created", routed(db, "lead.created")),
        ("whatsapp.inbound", routed(db, "whatsapp.inbound")),
    ]
    assert {"crm", "marketing"} <= set(destinations[0][1])
    assert {"atendimento", "crm"} <= set(destinations[1][1])
    lead_row = db.execute(
        "select phone, phone_raw, source, first_channel, touches from leads"
    ).fetchall()
    assert lead_row == [(PHONE, "5544999999999", "whatsapp", "whatsapp", 1)]


def test_ad_lead_carries_its_attribution_into_the_event_and_the_leads_table(
    dsn: str, db: psycopg.Connection
) -> None:
    with client(wa_settings(), dsn) as c:
        r = c.post("/webhooks/whatsapp", json=load("received-text-from-ad-pt.json"),
                   headers={"X-Webhook-Token": TOKEN})
    assert r.status_code == 200, r.text
    lead = db.execute("select payload from events where type = 'lead.created'").fetchone()
    assert lead is not None
    assert lead[0]["ad"]["source_id"] == "23722824350495506"
    assert lead[0]["ad"]["ctwa_clid"].startswith("Aff-nia")
    assert lead[0]["message"] == "mensagem recebida"
    row = db.execute(
        "select first_touch -> 'ad' ->> 'source_id', whatsapp_lid from leads"
    ).fetchone()
    assert row == ("23722824350495506", LID)


@pytest.mark.parametrize(("name", "status"), sorted(STATUS.items()))
def test_every_status_sample_updates_the_outbound_delivery_and_writes_no_event(
    dsn: str, db: psycopg.Connection, name: str, status: str
) -> None:
    delivery = sent_delivery(db, STATUS_ID)
    before = counts(db)
    with client(wa_settings(), dsn) as c:
        r = c.post(f"/webhooks/whatsapp?token={TOKEN}", json=load(name))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "recorded", "channel_status": status, "updated": 1}
    assert channel(db, delivery) == ("delivered", status, None)
    assert counts(db) == before


@pytest.mark.parametrize(("name", "expected"), sorted(DELIVERY.items()))
def test_every_delivery_sample_records_the_send_outcome(
    dsn: str, db: psycopg.Connection, name: str, expected: tuple[str, str, str | None]
) -> None:
    external_id, status, error = expected
    delivery = sent_delivery(db, external_id)
    before = counts(db)
    with client(wa_settings(), dsn) as c:
        r = c.post(f"/webhooks/whatsapp/{TOKEN}", json=load(name))
    assert r.status_code == 200, r.text
    # The outbox state stays 'delivered' (Z-API accepted the send); the channel says failed.
    assert channel(db, delivery) == ("delivered", status, error)
    assert counts(db) == before


@pytest.mark.parametrize(("name", "reason"), sorted(IGNORED.items()))
def test_every_other_sample_is_dropped_with_200_and_a_log_line(
    dsn: str, db: psycopg.Connection, caplog: pytest.LogCaptureFixture, name: str, reason: str
) -> None:
    with caplog.at_level(logging.INFO), client(wa_settings(), dsn) as c:
        r = c.post(f"/webhooks/whatsapp/{TOKEN}", json=load(name))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ignored", "reason": reason}
    assert counts(db) == (0, 0, 0)
    assert db.execute("select count(*) from channel_status_inbox").fetchone() == (0,)
    dropped = [rec for rec in caplog.records if getattr(rec, "action", None) == "zapi_ignored"]
    assert [getattr(rec, "reason", None) for rec in dropped] == [reason]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"fromMe": True}, "from_me"),
        ({"isGroup": True, "phone": "120363019502650977-group"}, "group"),
        ({"isNewsletter": True, "phone": "120363166555745933@newsletter"}, "newsletter"),
        ({"broadcast": True}, "broadcast"),
        ({"isStatusReply": True}, "status_reply"),
    ],
)
def test_echoes_groups_newsletters_broadcasts_and_status_replies_are_dropped(
    dsn: str, db: psycopg.Connection, change: dict[str, Any], reason: str
) -> None:
    with client(wa_settings(), dsn) as c:
        r = c.post(f"/webhooks/whatsapp/{TOKEN}", json={**load("received-text.json"), **change})
    assert r.status_code == 200
    assert r.json() == {"status": "ignored", "reason": reason}
    assert counts(db) == (0, 0, 0)


def test_retried_and_concurrent_duplicates_create_one_event_and_one_lead(
    dsn: str, db: psycopg.Connection
) -> None:
    doc = load("received-text.json")
    with client(wa_settings(), dsn) as c, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: c.post(f"/webhooks/whatsapp/{TOKEN}", json=doc),
                                range(12)))
        again = c.post(f"/webhooks/whatsapp/{TOKEN}", json=doc)
    assert [r.status_code for r in results] == [200] * 12
    assert sorted(r.json()["status"] for r in results) == ["accepted"] + ["duplicate"] * 11
    assert again.json()["duplicate"] is True
    first = next(r.json() for r in results if r.json()["status"] == "accepted")
    assert again.json()["event_ids"][0] == first["event_ids"][0]
    assert counts(db) == (2, pair_deliveries(db), 1)


def test_a_known_phone_gets_no_second_lead_and_old_numbers_match_the_canonical_one(
    dsn: str, db: psycopg.Connection
) -> None:
    # 12 digits: an old number without the ninth digit, as Z-API still reports many contacts.
    first = {**load("received-text.json"), "phone": "554499999999", "messageId": "M1"}
    second = {**load("received-image.json"), "messageId": "M2"}
    with client(wa_settings(), dsn) as c:
        r1 = c.post(f"/webhooks/whatsapp/{TOKEN}", json=first)
        r2 = c.post(f"/webhooks/whatsapp/{TOKEN}", json=second)
    assert r1.json()["lead_created"] is True
    assert r2.json()["lead_created"] is False
    assert r2.json()["lead_id"] == r1.json()["lead_id"]
    types = [t for (t,) in db.execute("select type from events order by received_at, type")]
    assert types.count("lead.created") == 1 and types.count("whatsapp.inbound") == 2
    # The raw id moves to the latest one seen; the canonical phone stays.
    assert db.execute("select phone, phone_raw from leads").fetchall() == [
        (PHONE, "5544999999999")
    ]


def test_site_lead_then_whatsapp_message_is_the_same_lead(
    dsn: str, db: psycopg.Connection
) -> None:
    secret = "site-secret"
    form = json.dumps({"name": "Ana", "phone": "(44) 99999-9999"}).encode()
    with client(wa_settings(SITE_WEBHOOK_SECRET=secret), dsn) as c:
        site = c.post("/webhooks/site/lead", content=form, headers={
            **signing.headers(secret, "msg_site_1", form), "content-type": "application/json"})
        wa = c.post(f"/webhooks/whatsapp/{TOKEN}", json=load("received-text-pt.json"))
    assert site.status_code == 202 and wa.status_code == 200
    assert wa.json()["lead_created"] is False
    assert wa.json()["lead_id"] == site.json()["lead_id"]
    assert db.execute(
        "select phone, phone_raw, whatsapp_lid, source, name from leads"
    ).fetchall() == [(PHONE, "5544999999999", LID, "site", "Ana")]


def test_lid_only_sender_is_recorded_without_a_lead_and_matched_later_by_its_lid(
    dsn: str, db: psycopg.Connection
) -> None:
    lid_only = {**load("received-text.json"), "phone": LID, "messageId": "L1"}
    with client(wa_settings(), dsn) as c:
        anonymous = c.post(f"/webhooks/whatsapp/{TOKEN}", json=lid_only)
        # A message that carries both the number and the lid creates the lead ...
        full = c.post(f"/webhooks/whatsapp/{TOKEN}",
                      json={**load("received-text.json"), "messageId": "L2"})
        # ... and after that the lid alone is enough to recognise the person.
        again = c.post(f"/webhooks/whatsapp/{TOKEN}", json={**lid_only, "messageId": "L3"})
    assert anonymous.json()["lead_created"] is False and anonymous.json()["lead_id"] is None
    assert full.json()["lead_created"] is True
    assert again.json()["lead_created"] is False
    assert again.json()["lead_id"] == full.json()["lead_id"]
    inbound = db.execute(
        "select payload from events where idempotency_key = 'L1'"
    ).fetchone()
    assert inbound is not None
    assert inbound[0]["phone_raw"] == LID and inbound[0].get("phone") is None
    assert db.execute("select count(*) from leads").fetchone() == (1,)


def test_statuses_only_move_forward_and_failed_is_final(
    dsn: str, db: psycopg.Connection
) -> None:
    delivery = sent_delivery(db, STATUS_ID)
    with client(wa_settings(), dsn) as c:
        for name in ("message-status-read.json", "message-status-received.json",
                     "message-status-sent.json"):
            c.post(f"/webhooks/whatsapp/{TOKEN}", json=load(name))
        assert channel(db, delivery) == ("delivered", "READ", None)
        c.post(f"/webhooks/whatsapp/{TOKEN}", json={
            **load("delivery-callback-v2-error.json"), "messageId": STATUS_ID, "zaapId": "Z1"})
        c.post(f"/webhooks/whatsapp/{TOKEN}", json=load("message-status-played.json"))
    assert channel(db, delivery) == ("delivered", "FAILED", "Phone number does not exist")


async def test_a_status_that_beats_the_worker_is_parked_and_folded_in_later(
    dsn: str, db: psycopg.Connection, store: Store
) -> None:
    settings = wa_settings()
    with client(settings, dsn) as c:
        r = c.post(f"/webhooks/whatsapp/{TOKEN}", json=load("message-status-read.json"))
    assert r.json()["updated"] == 0
    assert db.execute("select external_id, status from channel_status_inbox").fetchall() == [
        (STATUS_ID, "READ")
    ]
    delivery = sent_delivery(db, STATUS_ID)  # the worker's outcome flush lands now
    assert await store.reconcile_channel_statuses() == (1, 1)
    assert channel(db, delivery) == ("delivered", "READ", None)
    assert db.execute("select count(*) from channel_status_inbox").fetchone() == (0,)
    # Statuses of messages the hub never sent are dropped after keep_s.
    with client(settings, dsn) as c:
        c.post(f"/webhooks/whatsapp/{TOKEN}", json={**load("message-status-read.json"),
                                                   "ids": ["typed-on-the-phone"]})
    assert await store.reconcile_channel_statuses(keep_s=3600) == (0, 0)
    assert await store.reconcile_channel_statuses(keep_s=0) == (0, 1)


def _post_raw(c: Any, path: str, body: bytes, **headers: str) -> Any:
    return c.post(path, content=body, headers={"content-type": "application/json", **headers})


def test_refusals_answer_the_error_contract_and_write_nothing(
    dsn: str, db: psycopg.Connection
) -> None:
    good = json.dumps(load("received-text.json")).encode()
    other_instance = json.dumps({**load("received-text.json"), "instanceId": "staging"}).encode()
    with client(wa_settings(MAX_BODY_BYTES="2048"), dsn) as c:
        cases = {
            "no token": _post_raw(c, "/webhooks/whatsapp", good),
            "wrong path token": _post_raw(c, "/webhooks/whatsapp/nope", good),
            "wrong query token": _post_raw(c, "/webhooks/whatsapp?token=nope", good),
            "wrong header token": _post_raw(c, "/webhooks/whatsapp", good,
                                            **{"X-Webhook-Token": TOKEN[:-1]}),
            "non-ascii token": _post_raw(c, "/webhooks/whatsapp?token=%C3%A9", good),
            "other instance": _post_raw(c, f"/webhooks/whatsapp/{TOKEN}", other_instance),
            "not json": c.post(f"/webhooks/whatsapp/{TOKEN}", content=b"a=b",
                               headers={"content-type": "text/plain"}),
            "malformed": _post_raw(c, f"/webhooks/whatsapp/{TOKEN}", b'{"type": '),
            "too large": _post_raw(c, f"/webhooks/whatsapp/{TOKEN}", b" " * 4096 + good),
            "deep": _post_raw(c, f"/webhooks/whatsapp/{TOKEN}", b"[" * 100 + b"]" * 100),
        }
    got = {k: v.status_code for k, v in cases.items()}
    assert got == {
        "no token": 401, "wrong path token": 401, "wrong query token": 401,
        "wrong header token": 401, "non-ascii token": 401, "other instance": 403,
        "not json": 415, "malformed": 400, "too large": 413, "deep": 422,
    }
    for name, r in cases.items():
        assert set(r.json()["error"]) >= {"code", "message"}, name
        assert TOKEN not in r.text, name
    assert counts(db) == (0, 0, 0)


def test_not_configured_is_503_and_database_down_is_503(dsn: str, db: psycopg.Connection) -> None:
    doc = load("received-text.json")
    with client(make_settings(), dsn) as c:
        unset = c.post(f"/webhooks/whatsapp/{TOKEN}", json=doc)
    bad_dsn = "host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=1"
    with client(wa_settings(DB_POOL_TIMEOUT_S="1"), bad_dsn) as c:
        down = c.post(f"/webhooks/whatsapp/{TOKEN}", json=doc)
    assert (unset.status_code, unset.json()["error"]["code"]) == (503, "not_configured")
    assert (down.status_code, down.json()["error"]["code"]) == (503, "database_unavailable")
    assert counts(db) == (0, 0, 0)


def test_hmac_header_is_verified_when_configured(dsn: str, db: psycopg.Connection) -> None:
    secret = "proxy-hmac-secret"
    body = json.dumps(load("received-text.json")).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    path = f"/webhooks/whatsapp/{TOKEN}"
    with client(wa_settings(ZAPI_WEBHOOK_HMAC_SECRET=secret,
                            ZAPI_WEBHOOK_HMAC_HEADER="X-Proxy-Signature"), dsn) as c:
        missing = _post_raw(c, path, body)
        wrong = _post_raw(c, path, body, **{"X-Proxy-Signature": "sha256=" + "00" * 32})
        other_header = _post_raw(c, path, body, **{"X-Webhook-Signature": digest.hex()})
        assert counts(db) == (0, 0, 0)
        hex_ok = _post_raw(c, path, body, **{"X-Proxy-Signature": "sha256=" + digest.hex()})
        b64_ok = _post_raw(c, path, body,
                           **{"X-Proxy-Signature": base64.b64encode(digest).decode()})
    assert [missing.status_code, wrong.status_code, other_header.status_code] == [401] * 3
    assert missing.json()["error"]["code"] == "invalid_signature"
    assert hex_ok.json()["status"] == "accepted"
    assert b64_ok.json()["status"] == "duplicate"
    assert counts(db) == (2, pair_deliveries(db), 1)
