"""The admin HTTP surface of mappings and routes, through the real app, database and worker."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from carinho_outbox.settings import Settings
from carinho_outbox.store import Store, make_pool
from tests.conftest import make_settings
from tests.support.engine import eventually, running_worker
from tests.support.receiver import Receiver
from tests.support.samples import PAYLOADS
from tests.support.web import bearer, client, make_key

LEAD = "lead.created"
PAIR = "/mappings/lead.created/crm"

SCHEDULED_FOR_OPERACAO = {
    "mode": "merge",
    "fields": [
        {
            "to": "inicio",
            "from": "starts_at",
            "format": "date",
            "pattern": "DD/MM/YYYY HH:mm",
            "tz": "-03:00",
        },
        {"to": "dia_utc", "from": "starts_at", "format": "iso_date", "tz": "UTC"},
        {"to": "fim_unix", "from": "ends_at", "format": "unix_seconds"},
        {
            "to": "ids",
            "from": ["service_id", "client_id", "caregiver_id"],
            "format": "join",
            "separator": "|",
        },
        {"to": "origem", "const": "carinho"},
        {"to": "meta.evento", "from": "@event.id"},
        {"to": "meta.tipo", "from": "@event.type", "format": "upper"},
        {"to": "meta.quando", "from": "@event.occurred_at"},
        {"to": "valor", "from": "amount_cents", "format": "cents_to_decimal", "default": 0},
    ],
    "drop": ["caregiver_id"],
}


@pytest.fixture
def admin_key(dsn: str) -> str:
    return make_key(dsn, "ops", [], admin=True)


@pytest.fixture
def app(dsn: str) -> Any:
    with client(make_settings(), dsn) as c:
        yield c


def versions(db: psycopg.Connection, event_type: str, destination: str) -> list[tuple[int, bool]]:
    return db.execute(
        "select version, is_active from event_mappings where event_type = %s "
        "and destination = %s order by version",
        (event_type, destination),
    ).fetchall()


def test_admin_only(dsn: str, app: TestClient) -> None:
    site = make_key(dsn, "site", ["site"])
    for method, path in [
        ("GET", "/mappings"),
        ("GET", PAIR),
        ("POST", PAIR),
        ("POST", PAIR + "/activate"),
        ("GET", PAIR + "/diff"),
        ("POST", PAIR + "/preview"),
        ("GET", "/routes"),
        ("PUT", "/routes/lead.created/crm"),
    ]:
        assert app.request(method, path).status_code == 401, path
        response = app.request(method, path, headers=bearer(site), json={})
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "forbidden"


def test_save_activate_rollback_and_diff(
    app: TestClient, admin_key: str, db: psycopg.Connection
) -> None:
    h = bearer(admin_key)
    listed = app.get("/mappings", headers=h).json()["mappings"]
    lead_crm = next(m for m in listed if (m["event_type"], m["destination"]) == (LEAD, "crm"))
    assert (lead_crm["active_version"], lead_crm["versions"], lead_crm["route_enabled"]) == (
        1,
        1,
        True,
    )
    assert len(listed) >= 34

    spec = {"fields": [{"to": "nome", "from": "name", "format": "upper"}]}
    r = app.post(PAIR, headers=h, json=spec)
    assert r.status_code == 201, r.text
    assert (r.json()["version"], r.json()["is_active"]) == (2, False)
    r = app.post(PAIR + "?activate=true&note=upper+name", headers=h, json=spec)
    assert (r.status_code, r.json()["version"], r.json()["is_active"]) == (201, 3, True)
    assert versions(db, LEAD, "crm") == [(1, False), (2, False), (3, True)]

    shown = app.get(PAIR, headers=h).json()
    assert shown["active_version"] == 3
    assert [v["version"] for v in shown["versions"]] == [1, 2, 3]
    assert shown["versions"][2]["note"] == "upper name"
    assert shown["versions"][2]["created_by"] == "key:ops"
    assert shown["versions"][2]["spec"]["fields"][0]["format"] == "upper"
    assert shown["route"]["queue"] == "default"
    assert shown["activations"][0]["activated_by"] == "key:ops"

    r = app.post(PAIR + "/activate", headers=h, json={"version": 1})
    assert (r.status_code, r.json()["version"], r.json()["previous_version"]) == (200, 1, 3)
    assert versions(db, LEAD, "crm") == [(1, True), (2, False), (3, False)]
    r = app.post(PAIR + "/activate", headers=h, json={"version": 3})
    r = app.post(PAIR + "/rollback", headers=h)
    assert (r.status_code, r.json()["version"]) == (200, 2)

    diff = app.get(PAIR + "/diff?from=1&to=3", headers=h).json()
    assert diff["identical"] is False
    assert any(line.startswith("+ ") and '"upper"' in line for line in diff["diff"])
    assert app.get(PAIR + "/diff?from=2&to=3", headers=h).json()["identical"] is True
    assert app.get(PAIR + "/diff", headers=h).json()["from"] == 2  # default: active -> latest

    for bad in ({"version": 0}, {"version": "2"}, {"v": 2}, []):
        r = app.post(PAIR + "/activate", headers=h, json=bad)
        assert r.status_code == 422, bad
    assert app.get(PAIR + "/diff?from=x", headers=h).status_code == 422
    assert app.post(PAIR + "?activate=maybe", headers=h, json=spec).status_code == 422
    assert versions(db, LEAD, "crm") == [(1, False), (2, True), (3, False)]


def test_bad_spec_is_422_naming_the_rule_and_writes_nothing(
    app: TestClient, admin_key: str, db: psycopg.Connection
) -> None:
    h = bearer(admin_key)
    spec = {
        "fields": [
            {"to": "a", "from": "name"},
            {"to": "b", "from": "phone", "format": "phone_international"},
            {"to": "c", "from": "x", "format": "date"},
        ]
    }
    r = app.post(PAIR + "?activate=true", headers=h, json=spec)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert "fields[1] (to='b'): unknown format 'phone_international'" in error["message"]
    assert [d["path"] for d in error["details"]] == ["spec.fields.1", "spec.fields.2"]
    assert "fields[2] (to='c'): format 'date' needs a 'pattern'" in error["details"][1]["message"]
    r = app.post(
        PAIR,
        headers=h,
        content=b'{"fields": [',
    )
    assert r.status_code == 415  # no content type
    r = app.post(PAIR, headers={**h, "content-type": "application/json"}, content=b'{"fields": [')
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_json")
    assert app.post(PAIR, headers=h, json=["not", "an", "object"]).status_code == 422
    assert versions(db, LEAD, "crm") == [(1, True)]


def test_unknown_pair_or_version_is_404(app: TestClient, admin_key: str) -> None:
    h = bearer(admin_key)
    for method, path, body in [
        ("GET", "/mappings/lead.created/nowhere", None),
        ("POST", "/mappings/lead.created/nowhere", {"fields": []}),
        ("POST", "/mappings/no.such/crm/activate", {"version": 1}),
        ("POST", PAIR + "/activate", {"version": 7}),
        ("GET", PAIR + "/diff?from=1&to=9", None),
        ("POST", PAIR + "/preview", {"payload": PAYLOADS[LEAD], "version": 4}),
        ("POST", PAIR + "/preview", {"event_id": "00000000-0000-0000-0000-000000000001"}),
        ("GET", "/routes/lead.created/nowhere", None),
    ]:
        r = app.request(method, path, headers=h, json=body)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "not_found"


def _deliver(settings: Settings, dsn: str, db: psycopg.Connection, count: int) -> None:
    async def run() -> None:
        pool = make_pool(dsn, max_size=4, timeout_s=5.0, name="test-worker")
        await pool.open(wait=True, timeout=10)
        try:
            async with running_worker(settings, Store(pool), dsn):
                await eventually(
                    lambda: (
                        db.execute(
                            "select count(*) from deliveries where status = 'delivered'"
                        ).fetchone()
                        == (count,)
                    )
                )
        finally:
            await pool.close()

    asyncio.run(run())


def test_preview_is_byte_for_byte_what_the_destination_received(
    dsn: str, db: psycopg.Connection, receiver: Receiver, admin_key: str
) -> None:
    settings = make_settings(
        DEST_OPERACAO_URL=receiver.url("/operacao"), DEST_OPERACAO_SECRET="s3cret"
    )
    h = bearer(admin_key)
    crm = make_key(dsn, "crm", ["crm"])
    pair = "/mappings/service.scheduled/operacao"
    payload = {**PAYLOADS["service.scheduled"], "amount_cents": 123456}
    with client(settings, dsn) as app:
        r = app.post(pair + "?activate=true", headers=h, json=SCHEDULED_FOR_OPERACAO)
        assert r.status_code == 201, r.text
        before = app.post(pair + "/preview", headers=h, json={"payload": payload}).json()
        r = app.post(
            "/events",
            headers=bearer(crm),
            json={"type": "service.scheduled", "payload": payload},
        )
        assert r.status_code == 202, r.text
        event_id = r.json()["event_id"]
        _deliver(settings, dsn, db, 1)  # only operacao is configured
        (got,) = receiver.requests
        after = app.post(pair + "/preview", headers=h, json={"event_id": event_id}).json()
    assert (after["version"], after["version_source"], after["event_id"]) == (2, "pinned", event_id)
    assert after["body"].encode() == got.body
    assert after["envelope"]["data"] == got.json["data"]
    data = got.json["data"]
    assert data["inicio"] == "01/12/2026 08:00"
    assert data["dia_utc"] == "2026-12-01"
    assert data["fim_unix"] == 1796166000
    assert data["ids"] == "s-1|c-1|cg-1"
    assert data["valor"] == "1234.56"
    assert data["meta"]["tipo"] == "SERVICE.SCHEDULED"
    assert data["meta"]["evento"] == event_id
    assert "caregiver_id" not in data
    # A payload preview, before the event existed, already showed the same data (bar the
    # event's own id and time).
    assert before["version_source"] == "active"
    assert {k: v for k, v in before["envelope"]["data"].items() if k != "meta"} == {
        k: v for k, v in data.items() if k != "meta"
    }


def test_preview_rejects_bad_requests(app: TestClient, admin_key: str, dsn: str) -> None:
    h = bearer(admin_key)
    for body in (
        {},
        {"payload": PAYLOADS[LEAD], "event_id": "00000000-0000-0000-0000-000000000001"},
        {"payload": {"name": "x"}},  # neither phone nor e-mail: ingress would refuse it
        {"payload": PAYLOADS[LEAD], "version": "1"},
        {"event_id": "nope"},
    ):
        r = app.post(PAIR + "/preview", headers=h, json=body)
        assert r.status_code == 422, (body, r.text)
    r = app.post(PAIR + "/preview", headers=h, json={"payload": PAYLOADS[LEAD]})
    assert (r.status_code, r.json()["version"], r.json()["envelope"]["data"]) == (
        200,
        1,
        PAYLOADS[LEAD],
    )


def test_routes_list_put_and_history(
    app: TestClient, admin_key: str, db: psycopg.Connection
) -> None:
    h = bearer(admin_key)
    routes = app.get("/routes", headers=h).json()["routes"]
    assert {(r["event_type"], r["destination"]) for r in routes} >= {
        (LEAD, "crm"),
        (LEAD, "marketing"),
    }
    path = "/routes/lead.created/marketing"
    r = app.put(path, headers=h, json={"priority": 150, "delay_s": 30, "enabled": False})
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in ("queue", "priority", "delay_s", "enabled")} == {
        "queue": "low",
        "priority": 150,
        "delay_s": 30,
        "enabled": False,
    }
    assert db.execute(
        "select priority, delay_s, enabled from routes where event_type = %s "
        "and destination = 'marketing'",
        (LEAD,),
    ).fetchone() == (150, 30, False)
    shown = app.get(path, headers=h).json()
    latest = shown["history"][0]
    assert (latest["op"], latest["changed_by"]) == ("update", "key:ops")
    assert (latest["old_row"]["priority"], latest["new_row"]["priority"]) == (200, 150)
    assert shown["history"][-1]["op"] == "baseline"

    for body in (
        {},
        {"priority": "high"},
        {"priority": 1.5},
        {"enabled": "yes"},
        {"queue": ""},
        {"delay_s": -1},
        {"colour": "red"},
    ):
        r = app.put(path, headers=h, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["details"], body
    r = app.put("/routes/lead.created/nowhere", headers=h, json={"enabled": True})
    assert r.status_code == 422
    r = app.put("/routes/payment.failed/financeiro", headers=h, json={"queue": "critical"})
    assert (r.status_code, r.json()["created"], r.json()["warnings"]) == (201, True, [])
    assert db.execute("select count(*) from routes_history where op <> 'baseline'").fetchone() == (
        2,
    )
