"""Automations end to end: events → channel deliveries → a real Z-API stand-in (HTTP) and a real
SMTP server (aiosmtpd), with the exact messages asserted; the feedback delay as table state;
opt-out skips; Z-API's failure answers."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, ingest, running_worker
from tests.support.receiver import Received, Receiver, Reply
from tests.support.standins import (
    CLIENT_TOKEN,
    ZAPI_PREFIX,
    sends,
    smtp_sink,
    zapi_env,
    zapi_ok,
)

HOURS = "segunda a sexta, das 8h às 18h; sábados, das 8h às 12h"
GREETING = (
    "Olá, Maria! Aqui é Ana, da Carinho Cuidadores. 💜\n"
    "Recebemos seu contato e vamos conversar sobre o cuidado que sua família precisa.\n"
    f"Atendemos {HOURS}.\n"
    "Se não quiser mais receber mensagens, responda PARAR."
)
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


def delivery(db: psycopg.Connection, event_id: Any, destination: str) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "select d.*, d.available_at - e.received_at as delay"
            " from deliveries d join events e on e.id = d.event_id"
            " where d.event_id = %s and d.destination = %s",
            (event_id, destination),
        )
        row = cur.fetchone()
    assert row is not None, f"no {destination} delivery"
    return row


def status_of(db: psycopg.Connection, event_id: Any, destination: str) -> str:
    return str(delivery(db, event_id, destination)["status"])


async def test_lead_created_sends_the_greeting_through_zapi_and_keeps_its_message_id(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = zapi_ok
    settings = make_settings(**zapi_env(receiver))
    event_id, destinations, _ = await ingest(
        store, "lead.created", {"name": "Maria Souza", "phone": "+5541999998888"}, "site"
    )
    assert sorted(destinations) == ["crm", "marketing", "whatsapp"]
    async with running_worker(settings, store, dsn):
        await eventually(lambda: status_of(db, event_id, "whatsapp") == "delivered")
    [req] = sends(receiver)
    assert req.path == ZAPI_PREFIX + "send-text"
    assert req.headers["client-token"] == CLIENT_TOKEN
    assert req.headers["content-type"] == "application/json"
    assert req.json == {"phone": "5541999998888", "message": GREETING}
    row = delivery(db, event_id, "whatsapp")
    assert row["external_id"] == "MSG1"
    assert json.loads(row["last_response"])["zaapId"] == "ZAAP1"
    # The token of the URL is a secret: it is nowhere in what the hub kept.
    attempts = db.execute("select request_summary, error from webhook_deliveries").fetchall()
    assert all("TOK456" not in (s or "") + (e or "") for s, e in attempts)
    assert "5541999998888" not in attempts[0][0]
    # crm and marketing are not configured here: held, attempts untouched.
    assert delivery(db, event_id, "crm")["attempts"] == 0


async def test_client_registered_sends_welcome_email_and_whatsapp_and_saves_the_contact(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = zapi_ok
    with smtp_sink() as smtp:
        settings = make_settings(**zapi_env(receiver), **smtp.env())
        event_id, destinations, _ = await ingest(store, "client.registered", CLIENT, "crm")
        assert sorted(destinations) == [
            "crm", "email", "financeiro", "marketing", "whatsapp",
        ]  # fmt: skip
        # The contact is written with the event (a trigger), before any delivery runs.
        contact = db.execute(
            "select client_id, name, phone, email, consent from contacts"
        ).fetchall()
        assert contact == [("c-1", "João da Silva", "+5511987654321", "joao@example.com", None)]
        async with running_worker(settings, store, dsn):
            await eventually(
                lambda: all(
                    status_of(db, event_id, d) == "delivered" for d in ("email", "whatsapp")
                )
            )
        [mail] = smtp.mails
    assert mail.mail_from == "contato@carinho.com.br"
    assert mail.rcpt_tos == ["joao@example.com"]
    msg = mail.message
    assert msg["Subject"] == "Bem-vindo(a) à Carinho Cuidadores, João!"
    assert msg["To"] == "João da Silva <joao@example.com>"
    assert msg["From"] == "Carinho <contato@carinho.com.br>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert mail.part("plain") == (
        "Bem-vindo(a) à Carinho Cuidadores, João!\n\n"
        "Que bom ter você com a gente, João.\n\n"
        "A partir de agora, Ana acompanha o seu atendimento. Para qualquer dúvida, responda "
        f"este e-mail ou ligue para (41) 3333-4444 ({HOURS}).\n\n"
        "Ana\nCarinho Cuidadores\n"
        f"(41) 3333-4444 · {HOURS}\n"
        "https://carinho.com.br\n\n"
        "Você recebe este e-mail porque é cliente da Carinho Cuidadores.\n"
    )
    html = mail.part("html")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "@media only screen and (max-width: 620px)" in html
    assert "<p>Que bom ter você com a gente, João.</p>" in html
    assert 'src="https://carinho.com.br/static/logo.png"' in html
    row = delivery(db, event_id, "email")
    assert row["external_id"] == msg["Message-ID"] == f"<carinho.dlv{row['id']}@carinho.com.br>"

    [req] = sends(receiver)
    assert req.path == ZAPI_PREFIX + "send-text"
    assert req.json == {
        "phone": "5511987654321",
        "message": "Seja bem-vindo(a) à Carinho Cuidadores, João!\nEu sou Ana e vou acompanhar o "
        "seu atendimento. Qualquer dúvida, é só chamar aqui ou ligar para (41) 3333-4444 "
        f"({HOURS}).",
    }


async def test_service_completed_waits_two_hours_as_table_state_then_asks_for_feedback(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = zapi_ok
    with smtp_sink() as smtp:
        settings = make_settings(
            **zapi_env(receiver), **smtp.env(), FEEDBACK_SECRET="fb-secret",
            PUBLIC_BASE_URL="https://hub.carinho.com.br",
        )  # fmt: skip
        await ingest(store, "client.registered", CLIENT, "crm")
        event_id, destinations, _ = await ingest(store, "service.completed", SERVICE, "operacao")
        assert {"whatsapp", "email"} <= set(destinations)
        for channel in ("whatsapp", "email"):
            row = delivery(db, event_id, channel)
            # Both timestamps come from the same now(): exactly FEEDBACK_DELAY_S apart.
            assert row["delay"] == timedelta(hours=2)
            assert (row["status"], row["due"], row["attempts"]) == ("pending", False, 0)
        async with running_worker(settings, store, dsn):
            await asyncio.to_thread(smtp.wait_for, 1)  # the welcome e-mail
            await eventually(lambda: len(sends(receiver)) == 1)
            await asyncio.sleep(0.5)
            assert delivery(db, event_id, "whatsapp")["attempts"] == 0
            assert len(smtp.mails) == 1
            # Two hours pass (the row's clock, not ours).
            db.execute(
                "update deliveries set available_at = now() where event_id = %s", (event_id,)
            )
            await eventually(
                lambda: all(
                    status_of(db, event_id, c) == "delivered" for c in ("whatsapp", "email")
                )
            )
        feedback_mail = smtp.mails[1]
    request = sends(receiver)[1]
    assert request.path == ZAPI_PREFIX + "send-button-list"
    assert request.json == {
        "phone": "5511987654321",
        "message": "Olá, João! Como foi o atendimento de hoje da Carinho Cuidadores?\n"
        "Sua opinião ajuda nossos cuidadores a cuidar cada vez melhor.\n\n"
        "Se os botões não aparecerem, responda de 1 a 5 (1 = ruim, 5 = excelente).",
        "buttonList": {
            "buttons": [
                {"id": "rating_1", "label": "1 - Ruim"},
                {"id": "rating_2", "label": "2 - Regular"},
                {"id": "rating_3", "label": "3 - Bom"},
                {"id": "rating_4", "label": "4 - Muito bom"},
                {"id": "rating_5", "label": "5 - Excelente"},
            ]
        },
    }
    assert feedback_mail.message["Subject"] == "Como foi o atendimento da Carinho Cuidadores?"
    text = feedback_mail.part("plain")
    assert "Avaliar o atendimento: https://hub.carinho.com.br/feedback/" in text
    link = text.split("Avaliar o atendimento: ")[1].split("\n")[0]
    assert f'href="{link}"' in feedback_mail.part("html")
    pending = db.execute(
        "select service_id, client_id, caregiver_id, phone, email, whatsapp_at is not null,"
        " email_at is not null, answered_at from feedback_requests"
    ).fetchall()
    assert pending == [
        ("s-77", "c-1", "cg-1", "+5511987654321", "joao@example.com", True, True, None)
    ]


async def test_opted_out_and_non_consenting_people_get_nothing_and_the_skip_is_recorded(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = zapi_ok
    with smtp_sink() as smtp:
        settings = make_settings(**zapi_env(receiver), **smtp.env())
        db.execute(
            "insert into opt_outs (address, channel, reason) values ('+5541988887777',"
            " 'whatsapp', 'PARAR')"
        )
        opted, _, _ = await ingest(
            store, "lead.created", {"name": "Rita", "phone": "+5541988887777"}, "site"
        )
        refused, _, _ = await ingest(
            store,
            "lead.created",
            {"name": "Beto", "phone": "+5541977776666", "consent": False},
            "site",
        )
        # A client whose phone opted out gets no e-mail either: it is one person.
        client, _, _ = await ingest(
            store,
            "client.registered",
            {"client_id": "c-5", "name": "Rita", "email": "rita@example.com",
             "phone": "+5541988887777"},
            "crm",
        )  # fmt: skip
        async with running_worker(settings, store, dsn):
            pairs = [(opted, "whatsapp"), (refused, "whatsapp"), (client, "email")]
            pairs.append((client, "whatsapp"))
            await eventually(lambda: all(status_of(db, e, d) == "delivered" for e, d in pairs))
        assert smtp.mails == []
    assert sends(receiver) == []
    assert delivery(db, opted, "whatsapp")["last_response"] == "skipped: opted out"
    assert delivery(db, refused, "whatsapp")["last_response"] == "skipped: no consent"
    assert delivery(db, client, "email")["last_response"] == "skipped: opted out"
    skipped = db.execute(
        "select count(*) from webhook_deliveries where response_body like 'skipped:%%'"
        " and outcome = 'delivered' and request_summary like '%%: skipped: %%'"
    ).fetchone()
    assert skipped == (4,)


async def test_a_client_without_a_known_contact_is_dead_lettered_with_the_reason(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = zapi_ok
    settings = make_settings(**zapi_env(receiver))
    db.execute("update routes set delay_s = 0 where event_type = 'service.completed'")
    event_id, _, _ = await ingest(store, "service.completed", SERVICE, "operacao")
    async with running_worker(settings, store, dsn):
        await eventually(lambda: status_of(db, event_id, "whatsapp") == "dead")
    row = delivery(db, event_id, "whatsapp")
    assert row["attempts"] == 1
    assert "no contact for client_id 'c-1'" in row["last_error"]
    assert sends(receiver) == []


def _by_phone(answers: dict[str, list[Reply]]) -> Any:
    seen: dict[str, int] = {}

    def script(req: Received, n: int) -> Reply:
        phone = req.json["phone"]
        i = seen.get(phone, 0)
        seen[phone] = i + 1
        replies = answers[phone]
        return replies[min(i, len(replies) - 1)]

    return script


async def test_zapi_failures_are_classified(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    ok = Reply(200, '{"zaapId": "Z", "messageId": "M-OK", "id": "M-OK"}')
    answers = {
        # not configured client-token (the observed answer) → dead at once
        "5541900000001": [Reply(400, '{"error":"your client-token is not configured"}')],
        "5541900000002": [Reply(403, '{"error": "[IP request] not allowed"}')],
        # the instance cannot send right now → retried, then done
        "5541900000003": [Reply(200, '{"value": false}'), ok],
        "5541900000004": [Reply(502, "bad gateway"), ok],
        # 200 without a messageId (the send-text sample) is not a send
        "5541900000005": [Reply(200, '{"phone": "5541900000005", "message": "x"}'), ok],
    }
    receiver.script = _by_phone(answers)
    settings = make_settings(**zapi_env(receiver))
    events = {}
    for phone in answers:
        event_id, _, _ = await ingest(
            store, "lead.created", {"name": "Cliente", "phone": "+" + phone}, "site"
        )
        events[phone] = event_id
    async with running_worker(settings, store, dsn):
        await eventually(
            lambda: all(
                status_of(db, e, "whatsapp") in ("delivered", "dead") for e in events.values()
            )
        )
    rows = {p: delivery(db, e, "whatsapp") for p, e in events.items()}
    got = {p: (r["status"], r["attempts"]) for p, r in rows.items()}
    assert got == {
        "5541900000001": ("dead", 1),
        "5541900000002": ("dead", 1),
        "5541900000003": ("delivered", 2),
        "5541900000004": ("delivered", 2),
        "5541900000005": ("delivered", 2),
    }
    assert "ZAPI_CLIENT_TOKEN" in rows["5541900000001"]["last_error"]
    assert rows["5541900000002"]["last_error"] == "HTTP 403: [IP request] not allowed"
    assert rows["5541900000003"]["external_id"] == "M-OK"
    first_try = db.execute(
        "select w.error from webhook_deliveries w where w.delivery_id = %s and w.attempt = 1",
        (rows["5541900000003"]["id"],),
    ).fetchone()
    assert first_try is not None and "value=false" in first_try[0]


async def test_smtp_refusals_are_classified(dsn: str, store: Store, db: psycopg.Connection) -> None:
    with smtp_sink() as smtp:
        smtp.refuse = lambda addr: (
            "550 5.1.1 no such user" if addr.startswith("gone") else "451 4.3.0 try later"
        )
        settings = make_settings(**smtp.env(), MAX_ATTEMPTS="2")
        gone, _, _ = await ingest(
            store, "client.registered",
            {"client_id": "c-8", "name": "A", "email": "gone@example.com"}, "crm",
        )  # fmt: skip
        later, _, _ = await ingest(
            store, "client.registered",
            {"client_id": "c-9", "name": "B", "email": "later@example.com"}, "crm",
        )  # fmt: skip
        async with running_worker(settings, store, dsn):
            await eventually(
                lambda: (
                    status_of(db, gone, "email") == "dead"
                    and status_of(db, later, "email") == "dead"
                )
            )
        assert smtp.mails == []
    assert delivery(db, gone, "email")["attempts"] == 1  # 5xx: permanent
    assert delivery(db, later, "email")["attempts"] == 2  # 4xx: retried until the budget
    errors = [r[0] for r in db.execute("select error from webhook_deliveries").fetchall()]
    assert all("@example.com" not in (e or "") for e in errors)


async def test_client_updates_keep_the_contact_current_and_older_events_lose(
    dsn: str, store: Store, db: psycopg.Connection
) -> None:
    await ingest(store, "client.registered", CLIENT, "crm",
                 occurred_at=datetime(2026, 1, 1, 12, tzinfo=UTC))  # fmt: skip
    await ingest(
        store,
        "client.updated",
        {"client_id": "c-1", "changes": {"phone": "+5511912345678", "consent": False}},
        "crm",
        occurred_at=datetime(2026, 1, 2, 12, tzinfo=UTC),
    )
    # Delivered late, written earlier: it must not bring the old name back.
    await ingest(
        store,
        "client.updated",
        {"client_id": "c-1", "changes": {"name": "Nome Antigo"}},
        "crm",
        occurred_at=datetime(2026, 1, 1, 18, tzinfo=UTC),
    )
    assert db.execute("select name, phone, email, consent from contacts").fetchall() == [
        ("João da Silva", "+5511912345678", "joao@example.com", False)
    ]
