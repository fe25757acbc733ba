"""The feedback loop from both channels: the signed e-mail link (GET/POST /feedback/{token})
and WhatsApp replies (rating buttons, a plain "1".."5"), and PARAR as an opt-out. Real Z-API
and SMTP stand-ins, the real app, real rows."""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

import psycopg

from carinho_outbox.feedback_tokens import make_token
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, ingest, running_worker
from tests.support.receiver import Receiver
from tests.support.standins import INSTANCE, ZAPI_PREFIX, sends, smtp_sink, zapi_env, zapi_ok
from tests.support.web import client

if TYPE_CHECKING:
    from starlette.testclient import TestClient

WEBHOOK_TOKEN = "wh-token-abcdefghijklmnop"
SECRET = "feedback-secret"
CLIENT = {
    "client_id": "c-1",
    "name": "João da Silva",
    "email": "joao@example.com",
    "phone": "+5511987654321",
}
SERVICE = {
    "service_id": "s-77",
    "client_id": "c-1",
    "caregiver_id": "cg-1",
    "completed_at": "2026-12-01T20:00:00-03:00",
}


def received(phone_digits: str, message_id: str, **content: Any) -> dict[str, Any]:
    return {
        "type": "ReceivedCallback",
        "instanceId": INSTANCE,
        "phone": phone_digits,
        "messageId": message_id,
        "fromMe": False,
        "momment": int(time.time() * 1000),
        "senderName": "João",
        **content,
    }


def post_callback(c: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = c.post(f"/webhooks/whatsapp/{WEBHOOK_TOKEN}", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def feedback_events(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute(
        "select e.source, e.payload, array_agg(d.destination order by d.destination)"
        " from events e join deliveries d on d.event_id = e.id"
        " where e.type = 'feedback.received' group by e.id order by e.received_at"
    ).fetchall()


def delivered(db: psycopg.Connection, event_type: str, destination: str) -> int:
    row = db.execute(
        "select count(*) from deliveries d join events e on e.id = d.event_id"
        " where e.type = %s and d.destination = %s and d.status = 'delivered'",
        (event_type, destination),
    ).fetchone()
    return int(row[0]) if row else 0


async def test_email_link_form_records_the_rating_once(
    dsn: str, store: Store, db: psycopg.Connection
) -> None:
    db.execute("update routes set delay_s = 0 where event_type = 'service.completed'")
    with smtp_sink() as smtp:
        settings = make_settings(
            **smtp.env(), FEEDBACK_SECRET=SECRET, PUBLIC_BASE_URL="http://testserver"
        )
        await ingest(store, "client.registered", CLIENT, "crm")
        await ingest(store, "service.completed", SERVICE, "operacao")
        async with running_worker(settings, store, dsn):
            mails = await asyncio.to_thread(smtp.wait_for, 2)
    [mail] = [m for m in mails if m.message["Subject"].startswith("Como foi")]
    link = re.search(r"http://testserver(/feedback/\S+)", mail.part("plain"))
    assert link is not None
    path = link.group(1)

    def browse() -> list[tuple[int, str]]:
        with client(settings, dsn) as c:
            form = c.get(path)
            done = c.post(
                path,
                data={"rating": "5", "comment": "A cuidadora foi ótima!"},
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            again = c.post(path, data={"rating": "1"})
            later = c.get(path)
        return [(r.status_code, r.text) for r in (form, done, again, later)]

    form, done, again, later = await asyncio.to_thread(browse)
    assert form[0] == 200
    assert len(re.findall(r'<input type="radio" name="rating" value="[1-5]"', form[1])) == 5
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in form[1]
    assert "Como foi o atendimento?" in form[1]
    assert done == (200, done[1]) and "Obrigado pela sua avaliação!" in done[1]
    assert again[0] == 409 and "já foi enviada" in again[1]
    assert later[0] == 200 and "já foi enviada" in later[1] and "<form" not in later[1]

    assert feedback_events(db) == [
        (
            "feedback",
            {
                "service_id": "s-77",
                "rating": 5,
                "comment": "A cuidadora foi ótima!",
                "channel": "email",
                "client_id": "c-1",
                "caregiver_id": "cg-1",
            },
            ["crm", "cuidadores"],
        )
    ]
    answered = db.execute(
        "select rating, channel, comment, answered_at is not null, event_id is not null"
        " from feedback_requests"
    ).fetchall()
    assert answered == [(5, "email", "A cuidadora foi ótima!", True, True)]


async def test_whatsapp_rating_button_reply_becomes_feedback_once(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = zapi_ok
    db.execute("update routes set delay_s = 0 where event_type = 'service.completed'")
    settings = make_settings(**zapi_env(receiver), ZAPI_WEBHOOK_TOKEN=WEBHOOK_TOKEN)
    await ingest(store, "client.registered", CLIENT, "crm")
    await ingest(store, "service.completed", SERVICE, "operacao")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: delivered(db, "service.completed", "whatsapp") == 1)
    assert ZAPI_PREFIX + "send-button-list" in [r.path for r in sends(receiver)]

    def reply() -> list[dict[str, Any]]:
        with client(settings, dsn) as c:
            button = received(
                "5511987654321",
                "WA-1",
                buttonsResponseMessage={"buttonId": "rating_4", "message": "4 - Muito bom"},
            )
            return [
                post_callback(c, button),
                post_callback(c, button),  # Z-API retries a callback: nothing twice
                # A later "5" finds no pending request: the first answer stands.
                post_callback(c, received("5511987654321", "WA-2", text={"message": "5"})),
            ]

    first, retry, late = await asyncio.to_thread(reply)
    assert first["status"] == "accepted" and retry["status"] == "duplicate"
    assert late["status"] == "accepted"
    assert feedback_events(db) == [
        (
            "whatsapp",
            {
                "service_id": "s-77",
                "rating": 4,
                "channel": "whatsapp",
                "client_id": "c-1",
                "caregiver_id": "cg-1",
            },
            ["crm", "cuidadores"],
        )
    ]
    inbound = db.execute("select count(*) from events where type = 'whatsapp.inbound'").fetchone()
    assert inbound == (2,)  # the messages themselves still reach CRM and Atendimento


def test_plain_text_ratings_count_only_for_a_pending_recent_request(
    dsn: str, db: psycopg.Connection
) -> None:
    settings = make_settings(ZAPI_WEBHOOK_TOKEN=WEBHOOK_TOKEN, ZAPI_INSTANCE_ID=INSTANCE)
    db.execute(
        "insert into feedback_requests (service_id, client_id, caregiver_id, phone, whatsapp_at)"
        " values ('s-new', 'c-1', 'cg-1', '+5541999990001', now()),"
        "        ('s-old', 'c-2', 'cg-2', '+5541999990002', now() - interval '8 days')"
    )
    with client(settings, dsn) as c:
        post_callback(c, received("5541999990002", "T-1", text={"message": "5"}))
        post_callback(c, received("5541999990003", "T-2", text={"message": "5"}))
        post_callback(c, received("5541999990001", "T-3", text={"message": "4 horas atrasado"}))
        post_callback(c, received("5541999990001", "T-4", text={"message": "nota 3"}))
    assert [(s, p["service_id"], p["rating"]) for s, p, _ in feedback_events(db)] == [
        ("whatsapp", "s-new", 3)
    ]
    pending = db.execute(
        "select service_id, rating from feedback_requests order by service_id"
    ).fetchall()
    assert pending == [("s-new", 3), ("s-old", None)]


async def test_parar_records_the_opt_out_and_the_greeting_is_skipped(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = zapi_ok
    settings = make_settings(**zapi_env(receiver), ZAPI_WEBHOOK_TOKEN=WEBHOOK_TOKEN)

    def stop() -> dict[str, Any]:
        with client(settings, dsn) as c:
            return post_callback(c, received("5541966665555", "P-1", text={"message": "PARAR"}))

    answer = await asyncio.to_thread(stop)
    assert answer["lead_created"] is True
    assert db.execute("select address, channel, reason from opt_outs").fetchall() == [
        ("+5541966665555", "whatsapp", "PARAR")
    ]
    async with running_worker(settings, store, dsn):
        await eventually(lambda: delivered(db, "lead.created", "whatsapp") == 1)
    assert sends(receiver) == []
    skipped = db.execute(
        "select d.last_response from deliveries d join events e on e.id = d.event_id"
        " where e.type = 'lead.created' and d.destination = 'whatsapp'"
    ).fetchall()
    assert skipped == [("skipped: opted out",)]


def test_bad_expired_and_unknown_links(dsn: str, db: psycopg.Connection) -> None:
    settings = make_settings(FEEDBACK_SECRET=SECRET, FEEDBACK_TOKEN_TTL_S="3600")
    now = int(time.time())
    fresh = make_token(SECRET, "s-9", now)
    sig = fresh.split(".")[1]
    with client(settings, dsn) as c:
        tampered = c.get(f"/feedback/{make_token(SECRET, 's-10', now).split('.')[0]}.{sig}")
        expired = c.get(f"/feedback/{make_token(SECRET, 's-9', now - 3601)}")
        other_key = c.post(f"/feedback/{make_token('other', 's-9', now)}", data={"rating": "5"})
        no_rating = c.post(f"/feedback/{fresh}", data={"rating": "9", "comment": "<b>oi</b>"})
        # No request row (a link from before a restore): it still works, once.
        ok = c.post(f"/feedback/{fresh}", data={"rating": "2"})
        twice = c.post(f"/feedback/{fresh}", data={"rating": "2"})
    assert tampered.status_code == 404 and "não é válido" in tampered.text
    assert expired.status_code == 410 and "expirou" in expired.text
    assert other_key.status_code == 404
    assert no_rating.status_code == 422 and "&lt;b&gt;oi&lt;/b&gt;" in no_rating.text
    assert ok.status_code == 200 and twice.status_code == 409
    assert ok.headers["x-frame-options"] == "DENY" and ok.headers["cache-control"] == "no-store"
    assert [(s, p) for s, p, _ in feedback_events(db)] == [
        ("feedback", {"service_id": "s-9", "rating": 2, "channel": "email"})
    ]
    with client(make_settings(), dsn) as c:  # no FEEDBACK_SECRET: links do not work
        assert c.get(f"/feedback/{fresh}").status_code == 404
