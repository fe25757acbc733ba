"""`POST /events`: one transaction, idempotency, validation and the error contract."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import make_settings
from tests.support.samples import EXPECTED_DESTINATIONS, PAYLOADS
from tests.support.web import bearer, client, make_key


def counts(db: psycopg.Connection) -> tuple[int, int]:
    row = db.execute(
        "select (select count(*) from events), (select count(*) from deliveries)"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.fixture
def crm_key(dsn: str) -> str:
    return make_key(dsn, "crm-system", ["crm"])


def test_accepted_event_writes_event_and_one_delivery_per_destination(
    dsn: str, db: psycopg.Connection, crm_key: str
) -> None:
    with client(make_settings(), dsn) as c:
        r = c.post(
            "/events",
            headers=bearer(crm_key),
            json={"type": "service.scheduled", "payload": PAYLOADS["service.scheduled"]},
        )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["duplicate"] is False
    assert set(body["deliveries"]) == EXPECTED_DESTINATIONS["service.scheduled"]
    assert r.headers["x-request-id"]
    rows = db.execute(
        "select e.source, e.client, d.destination, d.status, d.queue from events e "
        "join deliveries d on d.event_id = e.id where e.id = %s order by d.destination",
        (body["event_id"],),
    ).fetchall()
    assert rows == [
        ("crm", "crm-system", "crm", "pending", "critical"),
        ("crm", "crm-system", "cuidadores", "pending", "critical"),
        ("crm", "crm-system", "financeiro", "pending", "critical"),
        ("crm", "crm-system", "operacao", "pending", "critical"),
    ]


def test_repeated_idempotency_key_returns_the_first_event_and_writes_nothing(
    dsn: str, db: psycopg.Connection, crm_key: str
) -> None:
    doc = {"type": "client.updated", "payload": PAYLOADS["client.updated"], "idempotency_key": "k1"}
    with client(make_settings(), dsn) as c:
        first = c.post("/events", headers=bearer(crm_key), json=doc)
        before = counts(db)
        second = c.post("/events", headers=bearer(crm_key), json=doc)
    assert first.status_code == 202 and second.status_code == 200
    assert second.json() == {
        "event_id": first.json()["event_id"],
        "deliveries": first.json()["deliveries"],
        "duplicate": True,
    }
    assert counts(db) == before == (1, 2)


def test_concurrent_duplicates_create_one_event(
    dsn: str, db: psycopg.Connection, crm_key: str
) -> None:
    doc = {"type": "client.updated", "payload": PAYLOADS["client.updated"], "idempotency_key": "x"}
    with client(make_settings(), dsn) as c, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: c.post("/events", headers=bearer(crm_key), json=doc),
                                range(16)))
    assert sorted(r.status_code for r in results) == [200] * 15 + [202]
    assert len({r.json()["event_id"] for r in results}) == 1
    assert counts(db) == (1, 2)


@pytest.mark.parametrize(
    ("doc", "code", "path"),
    [
        ({"type": "nope.nope", "payload": {}}, "validation_error", "type"),
        ({"type": "client.updated", "payload": {"changes": {}}}, "validation_error",
         "payload.client_id"),
        ({"type": "client.updated"}, "validation_error", "payload"),
        ({"type": "client.updated", "payload": [1]}, "validation_error", "payload"),
        ({"type": "client.updated", "payload": PAYLOADS["client.updated"],
          "occurred_at": "2026-01-01T10:00:00"}, "validation_error", "occurred_at"),
    ],
)
def test_invalid_events_get_422_with_field_paths_and_write_nothing(
    dsn: str, db: psycopg.Connection, crm_key: str, doc: dict, code: str, path: str
) -> None:
    with client(make_settings(), dsn) as c:
        r = c.post("/events", headers=bearer(crm_key), json=doc)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert path in [d["path"] for d in err["details"]], err
    assert counts(db) == (0, 0)


def test_error_contract_statuses_write_nothing(
    dsn: str, db: psycopg.Connection, crm_key: str
) -> None:
    settings = make_settings(MAX_BODY_BYTES="2048")
    good = {"type": "client.updated", "payload": PAYLOADS["client.updated"]}
    fin_key = make_key(dsn, "fin", ["financeiro"])
    revoked = make_key(dsn, "old", ["crm"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update api_keys set revoked_at = now() where name = 'old'")
    expired = make_key(dsn, "exp", ["crm"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update api_keys set expires_at = now() - interval '1 s' where name = 'exp'")
    with client(settings, dsn) as c:
        cases = {
            "no key": c.post("/events", json=good),
            "bad key": c.post("/events", json=good, headers=bearer("co_wrong")),
            "revoked": c.post("/events", json=good, headers=bearer(revoked)),
            "expired": c.post("/events", json=good, headers=bearer(expired)),
            "scope": c.post("/events", json=good, headers=bearer(fin_key)),
            "malformed": c.post("/events", content=b"{nope", headers={
                **bearer(crm_key), "content-type": "application/json"}),
            "not json": c.post("/events", content=b"a=b", headers={
                **bearer(crm_key), "content-type": "application/x-www-form-urlencoded"}),
            "too large": c.post("/events", content=json.dumps(
                {**good, "payload": {**good["payload"], "pad": "x" * 4000}}).encode(),
                headers={**bearer(crm_key), "content-type": "application/json"}),
            "deep": c.post("/events", content=("[" * 100 + "]" * 100).encode(), headers={
                **bearer(crm_key), "content-type": "application/json"}),
            "x-api-key ok": c.post("/events", json=good, headers={"X-API-Key": crm_key}),
        }
    got = {k: v.status_code for k, v in cases.items()}
    assert got == {
        "no key": 401, "bad key": 401, "revoked": 401, "expired": 401, "scope": 403,
        "malformed": 400, "not json": 415, "too large": 413, "deep": 422, "x-api-key ok": 202,
    }
    for name, r in cases.items():
        if r.status_code >= 400:
            assert set(r.json()["error"]) >= {"code", "message"}, name
    assert cases["revoked"].json()["error"]["message"] == "API key revoked"
    assert counts(db) == (1, 2)  # only the last one


def test_key_with_several_sources_must_name_one(dsn: str, db: psycopg.Connection) -> None:
    key = make_key(dsn, "multi", ["site", "whatsapp"])
    doc = {"type": "lead.created", "payload": PAYLOADS["lead.created"]}
    with client(make_settings(), dsn) as c:
        unnamed = c.post("/events", headers=bearer(key), json=doc)
        named = c.post("/events", headers=bearer(key), json={**doc, "source": "whatsapp"})
        foreign = c.post("/events", headers=bearer(key), json={**doc, "source": "crm"})
    assert unnamed.status_code == 422
    assert named.status_code == 202
    assert foreign.status_code == 403
    assert db.execute("select source from events").fetchall() == [("whatsapp",)]


def test_database_down_answers_503_not_500(dsn: str, crm_key: str) -> None:
    settings = make_settings(DB_POOL_TIMEOUT_S="1")
    bad_dsn = "host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=1"
    with client(settings, bad_dsn) as c:
        r = c.post("/events", headers=bearer(crm_key),
                   json={"type": "client.updated", "payload": PAYLOADS["client.updated"]})
        live = c.get("/health")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable"
    assert live.status_code == 200


def test_get_event_shows_deliveries_and_attempts_for_admins_only(
    dsn: str, crm_key: str
) -> None:
    admin = make_key(dsn, "ops", [], admin=True)
    with client(make_settings(), dsn) as c:
        r = c.post("/events", headers=bearer(crm_key),
                   json={"type": "client.updated", "payload": PAYLOADS["client.updated"]})
        event_id = r.json()["event_id"]
        denied = c.get(f"/events/{event_id}", headers=bearer(crm_key))
        detail = c.get(f"/events/{event_id}", headers=bearer(admin))
        missing = c.get("/events/not-a-uuid", headers=bearer(admin))
    assert denied.status_code == 403
    assert detail.status_code == 200
    doc = detail.json()
    assert doc["id"] == event_id and doc["type"] == "client.updated"
    assert sorted(d["destination"] for d in doc["deliveries"]) == ["crm", "operacao"]
    assert doc["attempts"] == []
    assert missing.status_code == 404
