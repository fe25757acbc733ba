"""`/openapi.json` and `/docs`: the document covers every route, Swagger UI is served locally,
and schemathesis fuzzes the running app against the document (no 5xx, responses conform)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from starlette.routing import Mount, Route

from carinho_outbox.web.app import create_app
from tests.conftest import make_settings
from tests.support.ops import AppServer, add_dead, add_live_worker
from tests.support.web import bearer, client, make_key


def test_document_describes_every_route_with_auth_and_schemas(dsn: str) -> None:
    app = create_app(make_settings(), dsn)
    with client(make_settings(), dsn) as c:
        r = c.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for route in app.routes:
        if isinstance(route, Route) and route.include_in_schema:
            for method in (route.methods or set()) - {"HEAD"}:
                assert (method, route.path) in listed, (method, route.path)
        else:
            assert isinstance(route, Mount) or not route.include_in_schema  # type: ignore[attr-defined]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "description": "API key"}
    assert schemes["apiKeyAuth"]["name"] == "X-API-Key"
    dlq = doc["paths"]["/dlq"]["get"]
    assert {"bearerAuth": []} in dlq["security"] and {"apiKeyAuth": []} in dlq["security"]
    assert {p["name"] for p in dlq["parameters"]} >= {"event_type", "since", "cursor", "limit"}
    assert dlq["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert doc["paths"]["/health"]["get"]["security"] == []
    body = doc["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/EventIn"}
    assert "DlqItem" in doc["components"]["schemas"]  # nested models are hoisted
    # Every $ref resolves.
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', r.text))
    assert refs and refs <= set(doc["components"]["schemas"])


def test_docs_is_swagger_ui_served_by_the_app_without_any_cdn(dsn: str) -> None:
    with client(make_settings(), dsn) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert not re.search(r"(src|href)=\"https?://", page.text)
        assets = re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page.text)
        assert len(assets) == 3
        for path in assets:
            got = c.get(path)
            assert got.status_code == 200, path
            assert len(got.content) > 30, path
        bundle = c.get("/docs/static/swagger-ui-bundle.js").text
        init = c.get("/docs/static/docs-init.js").text
    # Swagger UI 5 renders OpenAPI 3.1 (4.x refuses it).
    assert "SwaggerUIBundle" in bundle and re.search(r"\b5\.\d+\.\d+\b", bundle)
    assert '"/openapi.json"' in init


@pytest.fixture
def live_api(dsn: str, db: psycopg.Connection) -> Iterator[tuple[str, dict[str, str]]]:
    key = make_key(
        dsn, "fuzz", ["site", "whatsapp", "zapi", "crm", "operacao", "financeiro"], admin=True
    )
    add_dead(db)
    add_live_worker(db)  # else /health/detailed is, rightly, a 503
    # The webhooks configured, so they answer 401 for a bad signature (not 503).
    settings = make_settings(SITE_WEBHOOK_SECRET="whsec-test", ZAPI_WEBHOOK_TOKEN="zapi-test")
    with AppServer(create_app(settings, dsn)) as server:
        yield server.url, bearer(key)


@pytest.mark.slow
def test_api_conforms_to_its_document(live_api: tuple[str, dict[str, str]]) -> None:
    """Every operation, a bounded number of generated requests each, with an admin key that
    also has every source: no 5xx, documented status codes, bodies matching their schemas."""
    url, headers = live_api
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    operations = 0
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            # Schema-valid is not business-valid (an unknown event type, a cursor this API never
            # issued, a bulk reprocess without a filter): those 422s are right, so the
            # "positive data acceptance" check does not apply. Every other check does.
            case.call_and_validate(
                base_url=url,
                headers=headers,
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
            )

        try:
            run()
        except BaseException as exc:  # schemathesis raises exception groups; collect them all
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations >= 20
    assert calls >= operations * 5  # the fuzzer really ran
    assert failures == [], "\n\n".join(failures)
