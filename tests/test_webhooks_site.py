"""`POST /webhooks/site/lead`: signed site leads, de-duplication, attribution, one transaction."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest

from carinho_outbox import signing
from carinho_outbox.leads import LeadMatch, LeadPlan, LeadRow, PlannedEvent
from carinho_outbox.settings import Settings
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.web import client

SECRET = "whsec_" + "c2l0ZS1zZWNyZXQtZm9yLXRlc3RzLTAxMjM0NTY3"
PATH = "/webhooks/site/lead"


def site_settings(**env: str) -> Settings:
    return make_settings(SITE_WEBHOOK_SECRET=SECRET, **env)


def signed(
    body: bytes,
    msg_id: str | None = None,
    *,
    secret: str = SECRET,
    now: float | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    headers = signing.headers(secret, msg_id or f"msg_{uuid.uuid4().hex}", body, now=now)
    return {**headers, "content-type": content_type}


def post(c: Any, doc: dict[str, Any], msg_id: str | None = None) -> Any:
    body = json.dumps(doc).encode()
    return c.post(PATH, content=body, headers=signed(body, msg_id))


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


FORM = {
    "name": "Maria Souza",
    "phone": "(41) 9999-8888",  # pre-2016 mobile: the ninth digit is added
    "email": "  Maria.Souza@Example.COM ",
    "message": "Preciso de cuidadora para minha mãe",
    "page_url": "https://carinho.com.br/cuidadores",
    "consent": "sim",
    "utm_source": "google",
    "utm_medium": "cpc",
    "utm_campaign": "cuidador-curitiba",
    "gclid": "Cj0KCQ",
}


def test_a_new_lead_is_created_normalised_with_its_first_touch(
    dsn: str, db: psycopg.Connection
) -> None:
    with client(site_settings(), dsn) as c:
        r = post(c, FORM, "msg_1")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["event_type"] == "lead.created" and body["duplicate"] is False
    assert sorted(body["deliveries"]) == routed(db, "lead.created")
    assert {"crm", "marketing"} <= set(body["deliveries"])
    event = db.execute("select type, source, client, idempotency_key, payload from events")
    (etype, source, client_name, key, payload), = event.fetchall()
    assert (etype, source, client_name, key) == ("lead.created", "site", "site-webhook", "msg_1")
    assert payload["phone"] == "+5541999998888"
    assert payload["email"] == "maria.souza@example.com"
    assert payload["consent"] is True and payload["lead_id"] == body["lead_id"]
    assert payload["utm_campaign"] == "cuidador-curitiba"
    lead = db.execute(
        "select lead_id::text, name, phone, email, consent, source, touches, first_channel,"
        " first_utm_source, first_utm_medium, first_utm_campaign, last_utm_source,"
        " first_touch ->> 'gclid', first_touch ->> 'page_url' from leads"
    ).fetchall()
    assert lead == [(
        body["lead_id"], "Maria Souza", "+5541999998888", "maria.souza@example.com", True,
        "site", 1, "site", "google", "cpc", "cuidador-curitiba", "google", "Cj0KCQ",
        "https://carinho.com.br/cuidadores",
    )]


def test_a_known_phone_or_email_becomes_lead_updated_with_changes_and_the_new_touch(
    dsn: str, db: psycopg.Connection
) -> None:
    with client(site_settings(), dsn) as c:
        first = post(c, FORM)
        by_phone = post(c, {"name": "Maria S.", "telefone": "+55 41 99999-8888",
                            "utm_source": "facebook", "utm_medium": "social",
                            "origem_formulario": "rodape"})
        by_email = post(c, {"nome": "Maria Souza", "email": "MARIA.SOUZA@example.com",
                            "phone": "41 3333-4444", "utm_source": "newsletter"})
    assert [r.status_code for r in (first, by_phone, by_email)] == [202, 202, 202]
    assert by_phone.json()["event_type"] == by_email.json()["event_type"] == "lead.updated"
    assert by_phone.json()["lead_id"] == by_email.json()["lead_id"] == first.json()["lead_id"]
    assert by_phone.json()["deliveries"] == routed(db, "lead.updated")
    assert "crm" in by_phone.json()["deliveries"]
    updates = [p for (p,) in db.execute(
        "select payload from events where type = 'lead.updated' order by received_at")]
    phone_change = updates[0]["changes"]
    assert phone_change["name"] == "Maria S."
    assert phone_change["origem_formulario"] == "rodape"  # unknown form fields are kept
    assert phone_change["last_touch"]["utm_source"] == "facebook"
    assert phone_change["last_touch"]["channel"] == "site"
    assert "phone" not in phone_change  # the same number, normalised, is no change
    email_change = updates[1]["changes"]
    # A landline keeps 8 digits; it is reported, but the known mobile stays the lead's phone.
    assert email_change["phone"] == "+554133334444"
    assert updates[1]["lead_id"] == first.json()["lead_id"]
    lead = db.execute(
        "select name, phone, email, touches, first_utm_source, last_utm_source from leads"
    ).fetchall()
    assert lead == [
        ("Maria Souza", "+5541999998888", "maria.souza@example.com", 3, "google", "newsletter")
    ]
    created, updated = len(routed(db, "lead.created")), len(routed(db, "lead.updated"))
    assert counts(db) == (3, created + 2 * updated, 1)
    # One lead's events reach each destination in order (the catalog orders lead.* by lead_id).
    assert db.execute("select distinct ordering_key from deliveries").fetchall() == [
        (f"lead_id:{first.json()['lead_id']}",)
    ]


def test_a_submission_matching_two_leads_updates_the_phone_one_and_steals_nothing(
    dsn: str, db: psycopg.Connection
) -> None:
    with client(site_settings(), dsn) as c:
        a = post(c, {"name": "A", "phone": "11 98888-7777"})
        b = post(c, {"name": "B", "email": "b@example.com"})
        both = post(c, {"name": "A", "phone": "11988887777", "email": "b@example.com"})
    assert both.json()["lead_id"] == a.json()["lead_id"] != b.json()["lead_id"]
    assert db.execute("select name, phone, email from leads order by id").fetchall() == [
        ("A", "+5511988887777", None), ("B", None, "b@example.com"),
    ]
    change = db.execute(
        "select payload -> 'changes' ->> 'email' from events where type = 'lead.updated'"
    ).fetchone()
    assert change == ("b@example.com",)  # reported, for the CRM to merge


def test_a_repeated_webhook_id_is_idempotent(dsn: str, db: psycopg.Connection) -> None:
    body = json.dumps(FORM).encode()
    headers = signed(body, "msg_retry")
    with client(site_settings(), dsn) as c:
        first = c.post(PATH, content=body, headers=headers)
        before = counts(db)
        touches = db.execute("select touches from leads").fetchone()
        retry = c.post(PATH, content=body, headers=headers)
    assert (first.status_code, retry.status_code) == (202, 200)
    assert retry.json() == {**first.json(), "duplicate": True}
    assert counts(db) == before == (1, len(routed(db, "lead.created")), 1)
    assert db.execute("select touches from leads").fetchone() == touches


def test_concurrent_submissions_of_one_new_person_make_one_lead(
    dsn: str, db: psycopg.Connection
) -> None:
    doc = {"name": "Carla", "phone": "21 97777-6666", "email": "carla@example.com"}
    with client(site_settings(), dsn) as c, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: post(c, doc), range(10)))
    assert [r.status_code for r in results] == [202] * 10
    types = sorted(r.json()["event_type"] for r in results)
    assert types == ["lead.created"] + ["lead.updated"] * 9
    assert len({r.json()["lead_id"] for r in results}) == 1
    assert db.execute("select touches from leads").fetchall() == [(10,)]


def test_a_plain_html_form_post_is_accepted(dsn: str, db: psycopg.Connection) -> None:
    body = urlencode({"nome": "João", "celular": "11 98765-4321", "email": "",
                      "consent": "on", "utm_source": "instagram"}).encode()
    with client(site_settings(), dsn) as c:
        r = c.post(PATH, content=body,
                   headers=signed(body, content_type="application/x-www-form-urlencoded"))
    assert r.status_code == 202, r.text
    assert db.execute("select name, phone, email, first_utm_source from leads").fetchall() == [
        ("João", "+5511987654321", None, "instagram")
    ]


@pytest.mark.parametrize(
    ("doc", "path", "says"),
    [
        ({"name": "X", "phone": "12345"}, "phone", "too few digits"),
        ({"name": "X", "phone": "(20) 99999-9999"}, "phone", "unknown area code 20"),
        ({"name": "X", "phone": "+1 415 555 0100"}, "phone", "country code must be +55"),
        ({"name": "X", "email": "maria@"}, "email", "no domain"),
        ({"name": "X"}, "phone", "either phone or email is required"),
        ({"phone": "11987654321"}, "name", ""),
        ({"name": "X", "phone": "11987654321", "consent": "talvez"}, "consent", ""),
    ],
)
def test_invalid_forms_get_422_saying_why_and_write_nothing(
    dsn: str, db: psycopg.Connection, doc: dict[str, Any], path: str, says: str
) -> None:
    with client(site_settings(), dsn) as c:
        r = post(c, doc)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert path in [d["path"] for d in details], details
    assert says in " ".join(d["message"] for d in details)
    for value in doc.values():
        if len(str(value)) > 4:
            assert str(value) not in r.text  # the rejected input is never echoed
    assert counts(db) == (0, 0, 0)


def test_refusals_answer_the_error_contract_and_write_nothing(
    dsn: str, db: psycopg.Connection
) -> None:
    body = json.dumps(FORM).encode()
    old = time.time() - 301
    with client(site_settings(MAX_BODY_BYTES="2048"), dsn) as c:
        def send(content: bytes, headers: dict[str, str]) -> Any:
            return c.post(PATH, content=content, headers=headers)

        cases = {
            "unsigned": send(body, {"content-type": "application/json"}),
            "wrong secret": send(body, signed(body, secret="whsec_d3Jvbmc=")),
            "tampered": send(body.replace(b"Maria", b"Mario"), signed(body)),
            "replayed (old)": send(body, signed(body, now=old)),
            "from the future": send(body, signed(body, now=time.time() + 301)),
            "bad timestamp": send(body, {**signed(body), "webhook-timestamp": "soon"}),
            "long webhook-id": send(body, signed(body, "m" * 201)),
            "not json": send(b"hello", signed(b"hello", content_type="text/plain")),
            "malformed": send(b'{"name": ', signed(b'{"name": ')),
            "too large": send(b" " * 4096 + body, signed(b" " * 4096 + body)),
            "not an object": send(b"[1, 2]", signed(b"[1, 2]")),
            "NUL in a field": send(b'{"name": "A\\u0000", "phone": "11987654321"}',
                                   signed(b'{"name": "A\\u0000", "phone": "11987654321"}')),
        }
    got = {k: v.status_code for k, v in cases.items()}
    assert got == {
        "unsigned": 401, "wrong secret": 401, "tampered": 401, "replayed (old)": 401,
        "from the future": 401, "bad timestamp": 401, "long webhook-id": 400, "not json": 415,
        "malformed": 400, "too large": 413, "not an object": 422, "NUL in a field": 422,
    }
    for name, r in cases.items():
        assert set(r.json()["error"]) >= {"code", "message"}, name
    assert "replay" in cases["replayed (old)"].json()["error"]["message"]
    assert counts(db) == (0, 0, 0)


def test_not_configured_and_database_down_are_503(dsn: str, db: psycopg.Connection) -> None:
    body = json.dumps(FORM).encode()
    with client(make_settings(), dsn) as c:
        unset = c.post(PATH, content=body, headers=signed(body))
    bad_dsn = "host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=1"
    with client(site_settings(DB_POOL_TIMEOUT_S="1"), bad_dsn) as c:
        down = c.post(PATH, content=body, headers=signed(body))
    assert (unset.status_code, unset.json()["error"]["code"]) == (503, "not_configured")
    assert (down.status_code, down.json()["error"]["code"]) == (503, "database_unavailable")
    assert counts(db) == (0, 0, 0)


async def test_the_lead_row_and_the_event_commit_together_or_not_at_all(
    store: Store, db: psycopg.Connection
) -> None:
    """A failure after the lead row is written (here: Postgres refusing the event's payload)
    rolls the row back too."""
    row = LeadRow(
        lead_id=uuid.uuid4(), name="Z", phone="+5511987654321", phone_raw=None,
        whatsapp_lid=None, email=None, consent=True, source="site",
        first_touch={"channel": "site"}, last_touch={"channel": "site"}, touches=1,
    )
    poisoned = PlannedEvent("lead.created", "site", {"name": "Z\u0000"}, "k1")

    def plan(rows: list[dict[str, Any]]) -> LeadPlan:
        return LeadPlan(events=(poisoned,), insert=row, lead_id=row.lead_id)

    with pytest.raises(psycopg.Error):
        await store.ingest_with_leads(
            match=LeadMatch(phone=row.phone), dedupe=("site", "k1"), plan=plan,
            request_id=None, client="test",
        )
    assert counts(db) == (0, 0, 0)
    # The same plan with a clean payload commits both.
    clean = PlannedEvent("lead.created", "site", {"name": "Z", "phone": row.phone}, "k1")
    result = await store.ingest_with_leads(
        match=LeadMatch(phone=row.phone), dedupe=("site", "k1"),
        plan=lambda rows: LeadPlan(events=(clean,), insert=row, lead_id=row.lead_id),
        request_id=None, client="test",
    )
    assert result.created and not result.duplicate
    assert counts(db) == (1, len(routed(db, "lead.created")), 1)
    assert db.execute("select payload from events").fetchone() == (
        {"name": "Z", "phone": row.phone},
    )
