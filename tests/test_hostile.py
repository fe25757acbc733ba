"""Hostile input against the whole HTTP surface, complementing test_security_ingress (keys and
hypothesis on the ingress endpoints), test_webhooks_site (signatures), test_ops_api (DLQ
filters) and test_openapi (schemathesis):

- every non-public route, found by walking the app's route list (a route added later is
  covered without touching this file), refuses missing, wrong, revoked and expired keys (401)
  and non-admin keys (403); the dashboard pages need an admin session, whatever else is sent;
- every route that reads a body refuses oversized (413) and deeply nested (422) JSON;
- SQL metacharacters, NUL, very long and non-ASCII text in every path and query parameter of
  the admin routes are taken literally: never a 5xx, never a slow query, the tables intact;
- the real web process, fed bad and good requests carrying keys, secrets and personal data,
  writes none of them to its stdout/stderr or to an error body;
- the seeded mappings render any payload that passes validation, or raise MappingError
  (hypothesis): nothing else can escape into the worker.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route
from starlette.testclient import TestClient

from carinho_outbox import signing
from carinho_outbox.mapping import MappingError, parse_spec, render
from carinho_outbox.payloads import PayloadError, validate_payload
from carinho_outbox.web.app import create_app
from tests.conftest import make_settings
from tests.faults.support import Web
from tests.support.samples import PAYLOADS, SOURCE_FOR
from tests.support.web import bearer, make_key

SITE_SECRET = "whsec_aG9zdGlsZS1zaXRlLXNlY3JldA=="
ZAPI_TOKEN = "zapi-hostile-token-5b0e7c21d9"
NO_LIMITS = {"RATE_LIMIT_PER_S": "0", "RATE_LIMIT_IP_PER_S": "0",
             "RATE_LIMIT_WHATSAPP_IP_PER_S": "0"}
ALL_SOURCES = ["crm", "operacao", "financeiro", "site", "whatsapp", "zapi"]

# Reachable without an API key by design (each has its own check where it needs one).
PUBLIC = {
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/static/docs-init.js"),
    ("POST", "/webhooks/site/lead"),  # HMAC signature (test_webhooks_site)
    ("POST", "/webhooks/whatsapp"),  # Z-API token (test_webhooks_whatsapp)
    ("POST", "/webhooks/whatsapp/{token}"),
    ("GET", "/feedback/{token}"),  # signed per-client link (issue 5)
    ("POST", "/feedback/{token}"),
    ("GET", "/dashboard/login"),
    ("POST", "/dashboard/login"),
    ("GET", "/dashboard/static/{name}"),
}
# Any valid key whose scope allows the event's source.
KEYED = {("POST", "/events"), ("POST", "/events/batch")}
FILL = {
    "event_id": str(uuid.uuid4()),
    "delivery_id": "1",
    "event_type": "lead.created",
    "destination": "crm",
    "token": "t",
    "name": "dashboard.css",
    "action": "reprocess",
}


def app_routes(app: Any) -> list[tuple[str, str]]:
    out = []
    for route in app.routes:
        if isinstance(route, Route):  # the Swagger UI assets are a static Mount: public
            out += [(m, route.path) for m in sorted(route.methods or {"GET"}) if m != "HEAD"]
    return out


def fill(path: str, value: str | None = None) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: value or FILL[m[1]], path)


def counts(db: psycopg.Connection) -> tuple[int, ...]:
    row = db.execute(
        "select (select count(*) from events), (select count(*) from deliveries),"
        " (select count(*) from event_mappings), (select count(*) from routes_history),"
        " (select count(*) from api_keys)"
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def keys(dsn: str, db: psycopg.Connection) -> dict[str, str]:
    out = {
        "admin": make_key(dsn, "hostile-admin", ALL_SOURCES, admin=True),
        "user": make_key(dsn, "hostile-user", ALL_SOURCES),
        "revoked": make_key(dsn, "hostile-revoked", [], admin=True),
        "expired": make_key(dsn, "hostile-expired", [], admin=True),
    }
    db.execute("update api_keys set revoked_at = now() where name = 'hostile-revoked'")
    db.execute("update api_keys set expires_at = now() - interval '1 s' "
               "where name = 'hostile-expired'")
    return out


@pytest.fixture
def app_client(dsn: str) -> Iterator[TestClient]:
    settings = make_settings(METRICS_PUBLIC="false", MAX_BODY_BYTES="2048",
                             INGEST_BATCH_MAX_BODY_BYTES="2048",
                             SITE_WEBHOOK_SECRET=SITE_SECRET, ZAPI_WEBHOOK_TOKEN=ZAPI_TOKEN,
                             **NO_LIMITS)
    with TestClient(create_app(settings, dsn), raise_server_exceptions=False,
                    follow_redirects=False) as c:
        yield c


# --- who may call what --------------------------------------------------------------------------


def test_every_non_public_route_needs_a_valid_key_and_admin(
    app_client: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    routes = app_routes(app_client.app)
    api = [(m, p) for m, p in routes
           if (m, p) not in PUBLIC | KEYED and not p.startswith("/dashboard")]
    assert len(api) >= 20 and ("GET", "/metrics") in api  # METRICS_PUBLIC=false
    before = counts(db)
    refusals = {
        "no key": ({}, 401),
        "wrong key": (bearer("co_" + "x" * 40), 401),
        "garbage scheme": ({"Authorization": "Basic " + keys["admin"]}, 401),
        "empty bearer": ({"Authorization": "Bearer "}, 401),
        "non-ascii key": ({"Authorization": "Bearer clé-ñ-☃".encode()}, 401),
        "huge key": ({"X-API-Key": "k" * 20_000}, 401),
        "revoked admin": (bearer(keys["revoked"]), 401),
        "expired admin": (bearer(keys["expired"]), 401),
        "not admin": (bearer(keys["user"]), 403),
    }
    wrong: list[str] = []
    for method, path in [*api, *KEYED]:
        url = fill(path)
        for name, (headers, status) in refusals.items():
            if (method, path) in KEYED and name == "not admin":
                continue  # any key may post events (its scope is test_security_ingress's)
            r = app_client.request(method, url, headers=headers, json={})
            body = r.json() if r.headers.get("content-type", "").startswith(
                "application/json") else {}
            code = body.get("error", {}).get("code")
            if r.status_code != status or code not in ("unauthorized", "forbidden"):
                wrong.append(f"{method} {path} [{name}]: {r.status_code} {code}")
            if status == 401 and r.headers.get("www-authenticate") != "Bearer":
                wrong.append(f"{method} {path} [{name}]: no WWW-Authenticate")
        allowed = app_client.request(method, url, headers=bearer(keys["admin"]), json={})
        # /health/detailed is 503 by design here: no worker is alive.
        unhealthy = path == "/health/detailed" and allowed.status_code == 503
        if allowed.status_code in (401, 403) or (allowed.status_code >= 500 and not unhealthy):
            wrong.append(f"{method} {path} [admin]: {allowed.status_code}")
    assert wrong == []
    # The admin calls above were harmless ({} bodies, ids that do not exist): nothing written
    # by a refused call either.
    assert counts(db)[:2] == before[:2]


def test_dashboard_pages_need_an_admin_session_not_a_header(
    app_client: TestClient, keys: dict[str, str]
) -> None:
    pages = [(m, p) for m, p in app_routes(app_client.app)
             if p.startswith("/dashboard") and (m, p) not in PUBLIC]
    assert ("GET", "/dashboard") in pages and len(pages) >= 4
    attempts = {
        "nothing": {},
        "admin key as a header": bearer(keys["admin"]),
        "forged cookie": {"Cookie": "carinho_session=" + "A" * 64},
    }
    for method, path in pages:
        for name, headers in attempts.items():
            app_client.cookies.clear()
            r = app_client.request(method, fill(path), headers=headers,
                                   data={"csrf": "x", "key": keys["admin"]})
            to_login = r.status_code == 303 and r.headers["location"] == "/dashboard/login"
            assert to_login or r.status_code == 401, (method, path, name, r.status_code)
    # A non-admin key cannot open a session at all.
    r = app_client.post("/dashboard/login", data={"key": keys["user"]})
    assert r.status_code == 401 and "set-cookie" not in r.headers


# --- bodies -------------------------------------------------------------------------------------


def body_routes(app: Any) -> list[tuple[str, str]]:
    return [(m, p) for m, p in app_routes(app)
            if m in ("POST", "PUT") and not p.startswith(("/dashboard", "/feedback"))]


# Routes that answer without reading a body (the action is in the path): no 413 expected.
NO_BODY = {
    "/dlq/{delivery_id}/reprocess",
    "/dlq/{delivery_id}/archive",
    "/mappings/{event_type}/{destination}/rollback",
}


def test_every_json_route_refuses_oversized_and_deeply_nested_bodies(
    app_client: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    routes = [(m, p) for m, p in body_routes(app_client.app) if p not in NO_BODY]
    assert len(routes) >= 9
    before = counts(db)
    big = json.dumps({"type": "lead.created", "payload": {"pad": "x" * 3000}}).encode()
    deep = ("[" * 200 + "]" * 200).encode()
    wrong: list[str] = []
    for method, path in routes:
        url = fill(path, None) if "{token}" not in path else fill(path, ZAPI_TOKEN)
        for name, body, status, code in [
            ("oversized", big, 413, "payload_too_large"),
            ("deeply nested", deep, 422, "too_deep"),
        ]:
            headers = {**bearer(keys["admin"]), "content-type": "application/json",
                       "x-webhook-token": ZAPI_TOKEN}
            if path == "/webhooks/site/lead":
                headers.update(signing.headers(SITE_SECRET, uuid.uuid4().hex, body))
            r = app_client.request(method, url, content=body, headers=headers)
            got = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
            if (r.status_code, got) != (status, code):
                wrong.append(f"{method} {path} [{name}]: {r.status_code} {got}")
    assert wrong == []
    assert counts(db) == before


def test_dashboard_forms_refuse_oversized_bodies(app_client: TestClient) -> None:
    """Fault: an unauthenticated client posts a 3 MB form to /dashboard/login.

    Expected: 413 before the body is buffered (as every JSON route does)."""
    body = b"key=" + b"k" * 3_000_000
    r = app_client.post("/dashboard/login", content=body,
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413


# --- SQL metacharacters -------------------------------------------------------------------------

NASTY = [
    "'; drop table deliveries; --",
    "x' or '1'='1",
    "%' or 1=1 --",
    "1; select pg_sleep(3)",
    "\\",
    "%",
    "_",
    "lead.created\x00",
    "😀 ação",
    "a" * 500,
    "$1",
    "{}",
]


def test_sql_metacharacters_in_every_admin_parameter_are_harmless(
    app_client: TestClient, db: psycopg.Connection, keys: dict[str, str]
) -> None:
    admin = bearer(keys["admin"])
    spec = {"mode": "merge", "fields": []}
    before = counts(db)
    wrong: list[str] = []

    def check(method: str, url: str, **kw: Any) -> httpx.Response:
        started = time.monotonic()
        r = app_client.request(method, url, headers=admin, **kw)
        took = time.monotonic() - started
        if r.status_code >= 500 or took > 2.5:
            wrong.append(f"{method} {url[:80]!r}: {r.status_code} in {took:.1f}s")
        elif r.status_code >= 400 and set(r.json().get("error", {})) < {"code", "message"}:
            wrong.append(f"{method} {url[:80]!r}: {r.status_code} without the error contract")
        return r

    for raw in NASTY:
        x = quote(raw, safe="")
        check("GET", f"/events/{x}")
        check("GET", f"/dlq/{x}")
        check("POST", f"/dlq/{x}/reprocess")
        check("POST", f"/dlq/{x}/archive")
        for pair in (f"{x}/crm", f"lead.created/{x}", f"{x}/{x}"):
            check("GET", f"/mappings/{pair}")
            check("GET", f"/mappings/{pair}/diff?from=1&to=1")
            check("POST", f"/mappings/{pair}", json=spec)
            check("POST", f"/mappings/{pair}/activate", json={"version": 1})
            check("POST", f"/mappings/{pair}/rollback", json={})
            check("POST", f"/mappings/{pair}/preview",
                  json={"payload": PAYLOADS["lead.created"]})
            check("GET", f"/routes/{pair}")
            check("PUT", f"/routes/{pair}", json={"enabled": True})
        check("GET", f"/mappings?type={x}")
        check("GET", f"/mappings/lead.created/crm/diff?from={x}&to={x}")
        for field in ("cursor", "since", "until", "limit", "event_type", "destination", "error"):
            check("GET", f"/dlq?{field}={x}")
        check("POST", "/dlq/reprocess", json={"event_type": raw, "destination": raw})
    # A note is stored as given: literally, or refused as a whole (NUL), never interpreted.
    for raw in NASTY:
        r = check("POST", f"/mappings/lead.created/crm?activate=false&note={quote(raw, safe='')}",
                  json=spec)
        if r.status_code == 201:
            stored = db.execute(
                "select note from event_mappings where event_type = 'lead.created' "
                "and destination = 'crm' order by version desc limit 1").fetchone()
            assert stored == (raw,)
    assert wrong == []
    after = counts(db)
    assert after[:2] == before[:2] and after[4] == before[4]
    assert db.execute("select count(*) from routes where enabled").fetchone()[0] > 0


def test_dashboard_event_lookup_takes_hostile_text_literally(
    app_client: TestClient, keys: dict[str, str]
) -> None:
    r = app_client.post("/dashboard/login", data={"key": keys["admin"]})
    assert r.status_code == 303
    for raw in [*NASTY, "maria@example.com' --", "+55 (41) 9' or 1=1"]:
        r = app_client.get("/dashboard/event", params={"q": raw})
        assert r.status_code == 200, (raw, r.status_code)


# --- the real process's logs and error bodies ---------------------------------------------------

PII = {"phone": "+55 41 98877-6655", "email": "joana.lima@example.org", "cpf": "987.654.321-00"}
PII_SPELLINGS = ("98877-6655", "41988776655", "5541988776655", "joana.lima@example.org",
                 "987.654.321-00", "98765432100")


def test_the_real_web_process_leaks_no_secret_or_personal_data(
    dsn: str, db: psycopg.Connection, keys: dict[str, str], tmp_path: Path
) -> None:
    """Bad and good requests carrying keys, secrets and personal data go to the real web
    process (python -m carinho_outbox.web.serve, LOG_LEVEL=DEBUG): none of them appears in
    what it writes, nor in any error body."""
    log = tmp_path / "web.log"
    web = Web(dsn, log, LOG_LEVEL="DEBUG", LOG_FORMAT="json", SITE_WEBHOOK_SECRET=SITE_SECRET,
              ZAPI_WEBHOOK_TOKEN=ZAPI_TOKEN, **NO_LIMITS).wait_ready()
    wrong_key = "co_" + uuid.uuid4().hex + uuid.uuid4().hex
    wrong_token = "zapi-guess-" + uuid.uuid4().hex
    lead = {"name": "Joana Lima", **PII, "message": f"ligue {PII['phone']}, cpf {PII['cpf']}"}
    site_form = json.dumps({"name": "Joana", "phone": PII["phone"], "email": PII["email"],
                            "cpf": PII["cpf"]}).encode()
    user, admin = bearer(keys["user"]), bearer(keys["admin"])
    wa = {"type": "ReceivedCallback", "phone": "5541988776655", "messageId": "HOSTILE1",
          "fromMe": False, "momment": 1_700_000_000_000, "senderName": "Joana",
          "text": {"message": f"meu email é {PII['email']}"}}
    try:
        with httpx.Client(base_url=web.url(), timeout=10) as c:
            answers = [
                c.post("/events", headers=user, json={"type": "lead.created", "source": "site",
                                                      "payload": lead}),
                c.post("/events", headers=user, json={"type": "lead.created", "source": "site",
                                                      "payload": {**lead, "phone": "41 9887"}}),
                c.post("/events", headers=user, json={"type": "lead.created", "source": "site",
                                                      "payload": {**lead, "email": "joana@"}}),
                c.post("/events", headers=bearer(wrong_key), json={"type": "x", "payload": lead}),
                c.post("/events", headers={"X-API-Key": keys["revoked"]}, json={}),
                c.post("/events", content=b'{"payload": {"phone": "' + PII["phone"].encode()
                       + b'"', headers={**user, "content-type": "application/json"}),
                c.post("/webhooks/site/lead", content=site_form,
                       headers={**signing.headers("whsec_d3Jvbmc=", "m1", site_form),
                                "content-type": "application/json"}),
                c.post("/webhooks/site/lead", content=site_form,
                       headers={**signing.headers(SITE_SECRET, "m2", site_form),
                                "content-type": "application/json"}),
                c.post(f"/webhooks/whatsapp/{wrong_token}", json=wa),
                c.post(f"/webhooks/whatsapp/{ZAPI_TOKEN}", json=wa),
                c.post("/webhooks/whatsapp", json=wa, headers={"x-webhook-token": wrong_token}),
                c.get("/dlq", headers=admin, params={"error": PII["phone"]}),
                c.get("/dlq", headers=user),
                c.post("/dashboard/login", data={"key": wrong_key}),
                c.post("/dashboard/login", data={"key": keys["user"]}),
            ]
    finally:
        web.proc.terminate()
    statuses = [r.status_code for r in answers]
    assert statuses == [202, 422, 422, 401, 401, 400, 401, 202, 401, 200, 401, 200, 403, 401,
                        401], statuses
    secrets = (keys["admin"], keys["user"], keys["revoked"], wrong_key, wrong_token,
               ZAPI_TOKEN, SITE_SECRET)
    for r in answers:
        if r.status_code >= 400:
            leaked = [s for s in (*PII_SPELLINGS, *secrets) if s in r.text]
            assert leaked == [], (r.request.url, leaked)
    text = log.read_text(errors="replace")
    assert '"action": "request"' in text  # the log really was captured
    leaked = [s for s in (*PII_SPELLINGS, *secrets) if s in text]
    assert leaked == []


# --- mapping engine -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10,
)


def test_seeded_mappings_render_any_valid_payload_or_raise_mapping_error(
    db: psycopg.Connection,
) -> None:
    """The worker turns a MappingError into a dead letter with its reason; anything else a
    mapping raised would escape its dispatch task. So for every active seeded mapping and any
    payload that passes validation (the samples with fields replaced, added or removed), render
    returns a JSON-ready dict or raises MappingError."""
    specs = {}
    for etype, dest, spec in db.execute(
        "select event_type, destination, spec from event_mappings where is_active"
    ).fetchall():
        specs.setdefault(etype, []).append((dest, parse_spec(spec)))
    types = sorted(t for t in specs if t in PAYLOADS)
    assert len(types) >= 14
    field_names = sorted({k for p in PAYLOADS.values() for k in p} | {"extra", "utm_source"})
    rendered = [0]

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(
        etype=st.sampled_from(types),
        changes=st.dictionaries(st.sampled_from(field_names), JSON, max_size=4),
        drop=st.lists(st.sampled_from(field_names), max_size=2),
    )
    def check(etype: str, changes: dict[str, Any], drop: list[str]) -> None:
        payload = {k: v for k, v in {**PAYLOADS[etype], **changes}.items() if k not in drop}
        try:
            valid = validate_payload(etype, payload)
        except PayloadError:
            return
        meta = {"id": str(uuid.uuid4()), "type": etype, "source": SOURCE_FOR[etype],
                "occurred_at": "2026-01-01T10:00:00-03:00"}
        for _dest, spec in specs[etype]:
            try:
                out = render(spec, valid, meta)
            except MappingError:
                continue
            json.dumps(out, allow_nan=False)
            rendered[0] += 1

    check()
    assert rendered[0] >= 200  # the fuzzer reached the mappings, not only the validator
