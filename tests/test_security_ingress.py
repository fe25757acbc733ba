"""Ingress security: scopes and key states, masked logs without secrets, and hostile input
(hypothesis) that must never produce a 500 on POST /events or either webhook."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carinho_outbox import signing
from carinho_outbox.logs import setup_logging
from tests.conftest import make_settings
from tests.support.samples import PAYLOADS
from tests.support.web import bearer, client, make_key

SITE_SECRET = "site-secret-never-logged-7f3a"
ZAPI_TOKEN = "zapi-token-never-logged-0c91d2e4b7"
FIXTURES = next(
    p for p in (Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "zapi",
                Path("/work/shared/fixtures/zapi")) if p.is_dir()
)
# Property tests exercise validation, not the limiter.
NO_LIMITS = {
    "RATE_LIMIT_PER_S": "0",
    "RATE_LIMIT_IP_PER_S": "0",
    "RATE_LIMIT_WHATSAPP_IP_PER_S": "0",
}


def counts(db: psycopg.Connection) -> tuple[int, int, int]:
    row = db.execute(
        "select (select count(*) from events), (select count(*) from deliveries),"
        " (select count(*) from leads)"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def signed_post(c: Any, doc: Any, msg_id: str | None = None) -> Any:
    body = json.dumps(doc).encode()
    headers = signing.headers(SITE_SECRET, msg_id or uuid.uuid4().hex, body)
    return c.post("/webhooks/site/lead", content=body,
                  headers={**headers, "content-type": "application/json"})


# --- keys and scopes --------------------------------------------------------------------


def test_scope_revocation_and_expiry_refuse_and_write_nothing(
    dsn: str, db: psycopg.Connection
) -> None:
    financeiro = make_key(dsn, "financeiro", ["financeiro"])
    revoked = make_key(dsn, "old-site", ["site"])
    expired = make_key(dsn, "temp-site", ["site"])
    db.execute("update api_keys set revoked_at = now() where name = 'old-site'")
    db.execute("update api_keys set expires_at = now() - interval '1 s' where name = 'temp-site'")
    lead = {"type": "lead.created", "payload": PAYLOADS["lead.created"]}
    with client(make_settings(), dsn) as c:
        scope = c.post("/events", headers=bearer(financeiro), json=lead)
        as_site = c.post("/events", headers=bearer(financeiro), json={**lead, "source": "site"})
        gone = c.post("/events", headers=bearer(revoked), json=lead)
        late = c.post("/events", headers=bearer(expired), json=lead)
    assert (scope.status_code, scope.json()["error"]["code"]) == (403, "forbidden")
    assert as_site.status_code == 403
    assert (gone.status_code, gone.json()["error"]["message"]) == (401, "API key revoked")
    assert (late.status_code, late.json()["error"]["message"]) == (401, "API key expired")
    assert gone.headers["WWW-Authenticate"] == "Bearer"
    assert counts(db) == (0, 0, 0)
    # Only a hash is stored, and a refused key still counts as used (for the audit).
    stored = " ".join(str(v) for row in db.execute("select * from api_keys") for v in row)
    for key in (financeiro, revoked, expired):
        assert key not in stored
    assert db.execute(
        "select count(*) from api_keys where last_used_at is not null"
    ).fetchone() == (3,)


# --- logs -------------------------------------------------------------------------------


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """The production logging setup (JSON lines, masking filter) writing to captured stdout."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def start() -> None:
        # Called from the test itself: pytest swaps the captured stream between the fixture
        # and the call phase, and the handler keeps the stream it was built with.
        setup_logging("json", "DEBUG", "web")

    def lines() -> list[dict[str, Any]]:
        out = capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    yield start, lines
    root.handlers[:], level = saved
    root.setLevel(level)


PII = {
    "phone": "+55 41 99999-8888",
    "email": "maria.souza@example.com",
    "cpf": "123.456.789-09",
}
# Every spelling of them that must never reach a log line.
FORBIDDEN = (
    "99999-8888", "41999998888", "5541999998888", "maria.souza@example.com", "123.456.789-09",
    "12345678909", "5544999999999", "81896604192873",
)


def test_request_logs_are_masked_carry_ids_and_leak_no_secret(
    dsn: str, json_logs: Any
) -> None:
    site_key = make_key(dsn, "site-form", ["site"])
    settings = make_settings(SITE_WEBHOOK_SECRET=SITE_SECRET, ZAPI_WEBHOOK_TOKEN=ZAPI_TOKEN,
                             LOG_FORMAT="json")
    wa = json.loads((FIXTURES / "received-text-pt.json").read_text())
    wa["text"]["message"] = f"meu cpf é {PII['cpf']} e meu email {PII['email']}"
    start, read_lines = json_logs
    start()
    with client(settings, dsn) as c:
        answers = [
            c.post("/events", headers={**bearer(site_key), "X-Request-ID": "req-abc-123"},
                   json={"type": "lead.created", "payload": {
                       "name": "Maria", **PII,
                       "message": f"ligue {PII['phone']} ou {PII['email']}, cpf {PII['cpf']}"}}),
            c.post("/events", headers=bearer(site_key), json={
                "type": "lead.created", "payload": {"name": "Maria", "phone": "41 9999"}}),
            signed_post(c, {"name": "Maria", "phone": PII["phone"], "email": PII["email"],
                            "cpf": PII["cpf"]}),
            signed_post(c, {"name": "Maria", "phone": "(41) 9999", "email": "maria.souza@"}),
            c.post(f"/webhooks/whatsapp/{ZAPI_TOKEN}", json=wa),
            c.post(f"/webhooks/whatsapp?token={ZAPI_TOKEN}", json={**wa, "fromMe": True}),
            c.post("/webhooks/whatsapp/wrong-token-123", json=wa),
        ]
    assert [r.status_code for r in answers] == [202, 422, 202, 422, 200, 200, 401]
    assert answers[0].headers["x-request-id"] == "req-abc-123"
    for r in answers:  # error bodies never echo what was rejected
        assert not [f for f in FORBIDDEN if f in r.text], r.text
    lines = read_lines()
    text = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)
    leaked = [f for f in (*FORBIDDEN, site_key, ZAPI_TOKEN, SITE_SECRET) if f in text]
    assert leaked == [], leaked
    access = [line for line in lines if line.get("action") == "request"]
    assert len(access) == len(answers)
    assert all(line["request_id"] for line in access)
    assert access[0]["request_id"] == "req-abc-123"
    assert [line["client"] for line in access] == [
        "site-form", "site-form", "site-webhook", "site-webhook",
        "zapi-webhook", "zapi-webhook", "zapi-webhook",
    ]
    assert access[0]["event_ids"] == [answers[0].json()["event_id"]]
    assert access[2]["event_ids"] == [answers[2].json()["event_id"]]
    assert access[4]["event_ids"] == answers[4].json()["event_ids"]
    assert access[4]["path"] == "/webhooks/whatsapp/***"
    assert {line["status"] for line in access} == {202, 422, 200, 401}
    # The data did reach log lines, masked: the filter ran on real requests.
    assert "+55*******8888" in text and "m***@example.com" in text
    assert "+55*******9999" in text


# --- hostile input --------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=()), max_size=24)  # surrogates, NUL included
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), TEXT,
    st.from_regex(r"\+?[0-9 ()\-]{0,18}", fullmatch=True),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=20,
)
TYPES = sorted(PAYLOADS)
PHONES = st.from_regex(r"(\+?55)? ?\(?[1-9][0-9]\)? ?9?[0-9]{4}-?[0-9]{4}", fullmatch=True)
LID_SAMPLE = "81896604192873@lid"
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def assert_handled(r: Any) -> None:
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    if r.status_code >= 400:
        assert set(r.json()["error"]) >= {"code", "message"}


def mutated(base: st.SearchStrategy[dict[str, Any]], keys: st.SearchStrategy[str],
            values: st.SearchStrategy[Any], max_size: int = 3) -> st.SearchStrategy[Any]:
    """A valid document with a few fields replaced: reaches the deep paths, not just 422s."""
    return st.tuples(base, st.dictionaries(keys, values, max_size=max_size)).map(
        lambda pair: {**pair[0], **pair[1]}
    )


def test_events_endpoint_never_answers_500(dsn: str) -> None:
    key = make_key(dsn, "fuzzer", ["crm", "operacao", "financeiro", "zapi"])
    payload_keys = st.sampled_from(sorted({k for p in PAYLOADS.values() for k in p}))
    payloads = st.sampled_from(TYPES).flatmap(
        lambda t: st.tuples(st.just(t), mutated(st.just(dict(PAYLOADS[t])), payload_keys | TEXT,
                                                JSON | PHONES, max_size=2))
    )
    envelope = st.one_of(
        JSON,
        st.tuples(payloads, st.dictionaries(
            st.sampled_from(["source", "idempotency_key", "occurred_at", "type"]),
            st.sampled_from(["crm", "zapi", "site", "2026-01-01T10:00:00-03:00"]) | JSON,
            max_size=1,
        )).map(lambda x: {"type": x[0][0], "payload": x[0][1], **x[1]}),
    )
    with client(make_settings(**NO_LIMITS), dsn) as c:

        @PROPERTY
        @given(doc=envelope)
        def check(doc: Any) -> None:
            assert_handled(c.post("/events", headers={**bearer(key),
                                                      "content-type": "application/json"},
                                  content=json.dumps(doc).encode()))

        check()


def test_site_webhook_never_answers_500(dsn: str) -> None:
    fields = st.sampled_from([
        "name", "nome", "phone", "telefone", "celular", "email", "e-mail", "message",
        "page_url", "consent", "utm_source", "utm_campaign", "gclid", "fbclid", "extra",
    ])
    values = st.one_of(JSON, PHONES, st.just("maria@example.com"), st.just("sim"))
    base = st.fixed_dictionaries(
        {"name": st.just("Maria")},
        optional={"phone": PHONES, "email": st.sampled_from(["a@b.com", "A@B.COM "]),
                  "utm_source": st.sampled_from(["google", "meta"])},
    )
    forms = st.one_of(JSON, mutated(base, fields, values), base)
    with client(make_settings(SITE_WEBHOOK_SECRET=SITE_SECRET, **NO_LIMITS), dsn) as c:

        @PROPERTY
        @given(doc=forms, msg_id=st.uuids().map(str) | st.just("repeated-id"))
        def check(doc: Any, msg_id: str) -> None:
            assert_handled(signed_post(c, doc, msg_id))

        check()


def test_whatsapp_webhook_never_answers_500(dsn: str) -> None:
    samples = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
    keys = st.sampled_from([
        "type", "phone", "messageId", "fromMe", "isGroup", "text", "image", "audio", "video",
        "document", "location", "reaction", "buttonsResponseMessage", "listResponseMessage",
        "momment", "moment", "status", "ids", "error", "zaapId", "senderLid", "senderName",
        "externalAdReply", "instanceId", "waitingMessage", "notification",
    ])
    nested = st.one_of(JSON, st.fixed_dictionaries({"message": JSON}),
                       st.fixed_dictionaries({"buttonId": JSON, "message": JSON}))
    # Fresh message ids and phones, so accepted messages and new leads are reached too.
    fresh = st.tuples(st.sampled_from(samples), st.uuids(), PHONES | st.just(LID_SAMPLE)).map(
        lambda x: {**x[0], "messageId": str(x[1]), "phone": x[2]}
        if x[0].get("type") == "ReceivedCallback" else x[0]
    )
    callbacks = st.one_of(JSON, fresh, mutated(fresh, keys, nested, max_size=4))
    with client(make_settings(ZAPI_WEBHOOK_TOKEN=ZAPI_TOKEN, **NO_LIMITS), dsn) as c:

        @PROPERTY
        @given(doc=callbacks)
        def check(doc: Any) -> None:
            assert_handled(c.post(f"/webhooks/whatsapp/{ZAPI_TOKEN}",
                                  content=json.dumps(doc).encode(),
                                  headers={"content-type": "application/json"}))

        check()
