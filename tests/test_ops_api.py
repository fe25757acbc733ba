"""Operating it: /health/detailed, /status and the dead-letter API against a real database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from carinho_outbox.queries import q
from tests.conftest import make_settings
from tests.support.ops import (
    add_attempt,
    add_dead,
    add_delivery,
    add_event,
    add_live_worker,
)
from tests.support.web import bearer, client, make_key


@pytest.fixture
def admin(dsn: str) -> dict[str, str]:
    return bearer(make_key(dsn, "ops-admin", [], admin=True))


# --- /health/detailed ----------------------------------------------------------------------


def test_health_detailed_is_503_naming_workers_when_no_worker_is_alive(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    with client(make_settings(DEST_CRM_URL="http://127.0.0.1:9/crm"), dsn) as c:
        r = c.get("/health/detailed", headers=admin)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["failing"] == ["workers"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["database"]["latency_ms"] >= 0
    assert body["checks"]["migrations"] == {
        "ok": True,
        "applied": body["checks"]["migrations"]["applied"],
        "pending": [],
    }
    assert body["destinations"]["crm"]["configured"] is True
    assert body["destinations"]["operacao"]["configured"] is False


def test_health_detailed_is_200_with_a_live_worker_and_reports_backlog(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    add_live_worker(db)
    ev = add_event(db)
    # Configured destination: a due row waiting 120 s counts as lag.
    add_delivery(db, ev, "crm", "pending", due_in_s=-120)
    # Unconfigured destination: held, reported apart, not as lag.
    add_delivery(db, ev, "marketing", "pending", due_in_s=-5000)
    delivered = add_delivery(db, add_event(db), "crm", "delivered", ago_s=30)
    add_dead(db, "crm")
    with client(make_settings(DEST_CRM_URL="http://127.0.0.1:9/crm"), dsn) as c:
        r = c.get("/health/detailed", headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["failing"] == []
    assert body["checks"]["workers"]["alive"] == 1
    backlog = body["checks"]["backlog"]
    assert 119 <= backlog["oldest_pending_age_s"] < 200
    assert backlog["dlq_size"] == 1
    assert backlog["held"] == {"marketing": 1}
    crm = body["destinations"]["crm"]
    finished = db.execute("select finished_at from deliveries where id = %s", (delivered,))
    row = finished.fetchone()
    assert row is not None
    assert datetime.fromisoformat(crm["last_success_at"]) == row[0]
    assert crm["pending"] == 1 and crm["dead"] == 1


def test_health_detailed_reports_migrations_behind(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    add_live_worker(db)
    last = db.execute("select max(version) from schema_migrations").fetchone()
    assert last is not None
    db.execute("delete from schema_migrations where version = %s", (last[0],))
    with client(make_settings(), dsn) as c:
        r = c.get("/health/detailed", headers=admin)
    assert r.status_code == 503
    assert r.json()["failing"] == ["migrations"]
    assert len(r.json()["checks"]["migrations"]["pending"]) == 1


def test_health_detailed_is_503_when_the_database_is_down(dsn: str) -> None:
    settings = make_settings(DB_POOL_TIMEOUT_S="0.5")
    dead_dsn = "host=127.0.0.1 port=9 dbname=nothing user=nobody connect_timeout=1"
    with client(settings, dead_dsn) as c:
        r = c.get("/health/detailed", headers=bearer("co_whatever"))
        live = c.get("/health")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable"
    assert live.status_code == 200


def test_health_detailed_needs_an_admin_key(dsn: str) -> None:
    key = make_key(dsn, "crm-system", ["crm"])
    with client(make_settings(), dsn) as c:
        assert c.get("/health/detailed").status_code == 401
        assert c.get("/health/detailed", headers=bearer(key)).status_code == 403


# --- /status -------------------------------------------------------------------------------


def test_status_reports_counts_throughput_retries_dlq_lag_and_held(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    add_live_worker(db)
    lead = add_event(db, "lead.created", received_ago_s=10)
    svc = add_event(db, "service.scheduled", received_ago_s=400)
    add_delivery(db, lead, "crm", "pending")
    add_delivery(db, lead, "marketing", "pending")  # unconfigured below: held
    add_delivery(db, svc, "crm", "pending", attempts=1, due_in_s=30)
    add_delivery(db, svc, "operacao", "pending", attempts=2, due_in_s=30)
    add_delivery(db, svc, "cuidadores", "running", attempts=1)
    # Delivered 20 s ago, created 50 s ago: lag 30 s. And 200 s ago, lag 10 s.
    d1 = add_delivery(db, svc, "financeiro", "delivered", ago_s=20, created_ago_s=50)
    add_delivery(db, lead, "crm", "delivered", ago_s=200, created_ago_s=210)
    # Delivered two hours ago: outside every window.
    add_delivery(db, add_event(db, received_ago_s=7300), "crm", "delivered", ago_s=7200)
    add_attempt(db, d1, 1, "retry", "financeiro", ago_s=40, status=503)
    add_attempt(db, d1, 2, "delivered", "financeiro", ago_s=20, status=200)
    add_dead(db, "crm", "lead.created", ago_s=3000)
    settings = make_settings(
        **{
            f"DEST_{n.upper()}_URL": "http://127.0.0.1:9/x"
            for n in ("crm", "operacao", "cuidadores", "financeiro")
        }
    )
    with client(settings, dsn) as c:
        r = c.get("/status", headers=admin)
    assert r.status_code == 200, r.text
    s = r.json()
    counts = {(x["status"], x["event_type"], x["destination"]): x["count"] for x in s["counts"]}
    assert counts == {
        ("pending", "lead.created", "crm"): 1,
        ("pending", "lead.created", "marketing"): 1,
        ("retrying", "service.scheduled", "crm"): 1,
        ("retrying", "service.scheduled", "operacao"): 1,
        ("running", "service.scheduled", "cuidadores"): 1,
        ("dead", "lead.created", "crm"): 1,
    }
    assert s["delivered_1h_by_destination"] == {"crm": 1, "financeiro": 1}
    assert s["totals"] == {
        "pending": 2,
        "retrying": 2,
        "running": 1,
        "dead": 1,
        "delivered_1h": 2,
    }
    # received: lead (10 s), svc (400 s), the dead letter's event (3030 s); not the 7300 s one.
    assert s["throughput"]["1m"] == {"received": 1, "delivered": 1, "failed": 1}
    assert s["throughput"]["5m"] == {"received": 1, "delivered": 2, "failed": 1}
    assert s["throughput"]["15m"] == {"received": 2, "delivered": 2, "failed": 1}
    # The dead letter's attempts (3000-3002 s ago) count as failures too.
    assert s["throughput"]["60m"] == {"received": 3, "delivered": 2, "failed": 4}
    assert s["retry"] == {
        "waiting": 2,
        "by_attempt": {"1": 1, "2": 1},
        "by_destination": {"crm": 1, "operacao": 1},
    }
    assert s["dlq"]["size"] == 1
    assert s["dlq"]["by_destination"] == {"crm": 1}
    assert s["lag"]["samples"] == 2
    assert s["lag"]["p50_s"] == pytest.approx(20.0, abs=0.5)
    assert s["lag"]["p95_s"] == pytest.approx(29.0, abs=0.5)
    assert s["held"] == [{"destination": "marketing", "pending": 1}]
    assert s["workers"]["alive"] == 1
    assert s["workers"]["list"][0]["id"] == "w-1"
    queues = {x["queue"]: x["pending"] for x in s["queues"]}
    assert sum(queues.values()) == 4


def _plan_nodes(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    out = [(plan["Node Type"], plan.get("Relation Name"))]
    for child in plan.get("Plans", []):
        out.extend(_plan_nodes(child))
    return out


# The operator queries and sample parameters: each must reach the big tables through an index.
OPS_QUERIES: dict[str, dict[str, Any]] = {
    "ops_destinations": {"destinations": ["crm", "operacao"]},
    "ops_open_counts": {},
    "ops_delivered_by_destination": {"settle_s": 15.0},
    "ops_dead_range": {},
    "ops_throughput": {"settle_s": 15.0},
    "status_rollup": {"settle_s": 15.0},
    "ops_lag": {"window_s": 900, "sample": 10000},
    "ops_state_gauges": {},
    "ops_series": {},
    "dlq_list": {
        "event_type": None,
        "destination": None,
        "since": None,
        "until": None,
        "error": None,
        "after_dead_at": None,
        "after_id": None,
        "limit": 51,
    },
    "dlq_stats": {},
    "alert_dead_count": {
        "since": datetime.now(UTC) - timedelta(minutes=1),
        "until": datetime.now(UTC),
    },
    "alert_oldest_pending": {"destinations": ["crm", "operacao"]},
    "lookup_events_by_phone": {"phone": "+5541999998888", "limit": 20},
    "lookup_events_by_email": {"email": "maria@example.com", "limit": 20},
}
BIG_TABLES = {"deliveries", "events", "webhook_deliveries"}


@pytest.mark.slow
def test_operator_queries_use_indexes_with_200k_finished_rows(db: psycopg.Connection) -> None:
    # 200k events delivered over the past week, 2k dead, a small live backlog: the shape of a
    # real hub, where finished rows dwarf everything the operator queries look at.
    db.execute(
        """
        insert into events (type, source, payload, received_at)
        select 'lead.created', 'site',
               jsonb_build_object('name', 'n' || g, 'phone', '+55419' || lpad(g::text, 8, '0')),
               now() - interval '2 hours' - (g * interval '3 seconds')
        from generate_series(1, 200000) g
        """
    )
    db.execute(
        """
        insert into deliveries (event_id, destination, status, attempts, finished_at, created_at,
                                dead_at, last_error)
        select id, case when random() < 0.5 then 'crm' else 'marketing' end,
               case when random() < 0.01 then 'dead' else 'delivered' end, 1,
               received_at + interval '1 second', received_at, null, null
        from events
        """
    )
    db.execute(
        "update deliveries set dead_at = finished_at, last_error = 'HTTP 400' where status = 'dead'"
    )
    db.execute(
        """
        insert into webhook_deliveries (delivery_id, attempt, destination, outcome,
                                        response_status, duration_ms, created_at)
        select id, 1, destination, case status when 'dead' then 'dead' else 'delivered' end,
               200, 10, finished_at
        from deliveries
        """
    )
    recent = add_event(db)
    add_delivery(db, recent, "crm", "pending")
    add_delivery(db, recent, "operacao", "pending", attempts=1, due_in_s=60)
    db.execute("analyze")
    problems: list[str] = []
    with db.cursor() as cur:
        for name, params in OPS_QUERIES.items():
            cur.execute(b"explain (format json) " + q(name).as_bytes(cur), params)
            row = cur.fetchone()
            assert row is not None
            plan = row[0][0]["Plan"]
            for node, relation in _plan_nodes(plan):
                if node == "Seq Scan" and relation in BIG_TABLES:
                    problems.append(f"{name}: Seq Scan on {relation}")
    assert problems == []


# --- the dead-letter API -------------------------------------------------------------------


def test_dlq_list_filters_and_keyset_pagination(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    ids = [add_dead(db, "crm", "lead.created", "HTTP 400", ago_s=100 + i) for i in range(5)]
    other = add_dead(db, "operacao", "service.scheduled", "HTTP 404 not found", ago_s=50)
    with client(make_settings(), dsn) as c:
        r = c.get("/dlq", headers=admin, params={"limit": 2})
        assert r.status_code == 200, r.text
        page = r.json()
        seen = [x["id"] for x in page["items"]]
        while page["next"]:
            page = c.get("/dlq", headers=admin, params={"limit": 2, "cursor": page["next"]}).json()
            seen.extend(x["id"] for x in page["items"])
        # Newest first: `other` died 50 s ago, then ids[0] (100 s), ids[1] (101 s), …
        assert seen == [other, *ids]

        by_dest = c.get("/dlq", headers=admin, params={"destination": "operacao"}).json()
        assert [x["id"] for x in by_dest["items"]] == [other]
        assert by_dest["next"] is None
        by_type = c.get("/dlq", headers=admin, params={"event_type": "lead.created"}).json()
        assert len(by_type["items"]) == 5
        by_error = c.get("/dlq", headers=admin, params={"error": "not FOUND"}).json()
        assert [x["id"] for x in by_error["items"]] == [other]
        since = (datetime.now(UTC) - timedelta(seconds=102)).isoformat()
        until = (datetime.now(UTC) - timedelta(seconds=75)).isoformat()
        window = c.get("/dlq", headers=admin, params={"since": since, "until": until}).json()
        assert [x["id"] for x in window["items"]] == ids[:2]


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no offset: ambiguous
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"colour": "blue"}, "colour"),
        ({"error": "a\x00b"}, "error"),
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, ""),
    ],
)
def test_dlq_list_bad_filters_are_422_with_field_paths(
    dsn: str, admin: dict[str, str], params: dict[str, str], path: str
) -> None:
    with client(make_settings(), dsn) as c:
        r = c.get("/dlq", headers=admin, params=params)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert path in [d["path"] for d in err["details"]]


@pytest.mark.parametrize(
    "nasty",
    ["'; drop table deliveries; --", "%", "_", "\\", "x' or '1'='1", "%' or 1=1 --", "🙂"],
)
def test_dlq_filters_with_sql_metacharacters_are_harmless(
    dsn: str, db: psycopg.Connection, admin: dict[str, str], nasty: str
) -> None:
    add_dead(db, "crm", error="HTTP 400")
    with client(make_settings(), dsn) as c:
        for field in ("error", "event_type", "destination"):
            r = c.get("/dlq", headers=admin, params={field: nasty})
            assert r.status_code == 200, r.text
            # Taken literally: `%` and `_` match themselves, so nothing matches.
            assert r.json()["items"] == []
        bulk = c.post("/dlq/reprocess", headers=admin, json={"error": nasty})
        assert bulk.status_code == 200 and bulk.json()["reprocessed"] == 0
    row = db.execute("select count(*) from deliveries where status = 'dead'").fetchone()
    assert row == (1,)


def test_dlq_show_has_event_last_response_and_every_attempt(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    dead = add_dead(db, "crm", "lead.created", "HTTP 400", attempts=3)
    with client(make_settings(), dsn) as c:
        r = c.get(f"/dlq/{dead}", headers=admin)
        missing = c.get("/dlq/999999", headers=admin)
        junk = c.get("/dlq/abc", headers=admin)
        huge = c.get("/dlq/99999999999999999999999", headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "dead"
    assert body["last_status"] == 400
    assert body["last_response"] == '{"error":"bad"}'
    assert body["event"]["type"] == "lead.created"
    assert body["event"]["payload"]["name"] == "Maria Souza"
    assert [(a["attempt"], a["outcome"]) for a in body["attempts_log"]] == [
        (1, "retry"),
        (2, "retry"),
        (3, "dead"),
    ]
    assert missing.status_code == junk.status_code == huge.status_code == 404


def test_dlq_reprocess_one_with_remap_and_archive(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    first = add_dead(db, "crm")
    second = add_dead(db, "crm")
    with client(make_settings(), dsn) as c:
        r = c.post(f"/dlq/{first}/reprocess?remap=true", headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "pending"
        # lead.created → crm has an active mapping (version 1): remap pins it.
        assert r.json()["mapping_version"] == 1
        # Pending again: no longer in the DLQ at all.
        again = c.post(f"/dlq/{first}/reprocess", headers=admin)
        assert again.status_code == 404
        bad_flag = c.post(f"/dlq/{second}/reprocess?remap=maybe", headers=admin)
        assert bad_flag.status_code == 422
        archived = c.post(f"/dlq/{second}/archive", headers=admin)
        assert archived.status_code == 200 and archived.json()["status"] == "archived"
        assert c.post(f"/dlq/{second}/archive", headers=admin).status_code == 409
        assert c.post("/dlq/424242/archive", headers=admin).status_code == 404
        shown = c.get(f"/dlq/{second}", headers=admin).json()
        assert shown["status"] == "archived"
    rows = dict(db.execute("select id, status from deliveries").fetchall())
    assert rows[first] == "pending" and rows[second] == "archived"
    attempts = db.execute(
        "select attempts, reprocessed, mapping_version from deliveries where id = %s", (first,)
    ).fetchone()
    assert attempts == (0, 1, 1)


def test_dlq_bulk_reprocess_by_filter_returns_how_many(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    crm = [add_dead(db, "crm", error="HTTP 400") for _ in range(3)]
    other = add_dead(db, "operacao", error="HTTP 410")
    with client(make_settings(), dsn) as c:
        refused = c.post("/dlq/reprocess", headers=admin, json={})
        assert refused.status_code == 422
        assert refused.json()["error"]["details"][0]["path"] == "all"
        bad = c.post("/dlq/reprocess", headers=admin, json={"since": "nope", "limit": -1})
        assert bad.status_code == 422
        assert {d["path"] for d in bad.json()["error"]["details"]} == {"since", "limit"}
        not_json = c.post(
            "/dlq/reprocess", headers={**admin, "content-type": "application/json"}, content=b"{"
        )
        assert not_json.status_code == 400
        r = c.post("/dlq/reprocess", headers=admin, json={"destination": "crm", "limit": 2})
        assert r.json() == {"reprocessed": 2, "limit": 2, "more": True}
        r = c.post("/dlq/reprocess", headers=admin, json={"destination": "crm"})
        assert r.json() == {"reprocessed": 1, "limit": 10000, "more": False}
        everything = c.post("/dlq/reprocess", headers=admin, json={"all": True})
        assert everything.json()["reprocessed"] == 1
    statuses = dict(db.execute("select id, status from deliveries").fetchall())
    assert all(statuses[i] == "pending" for i in [*crm, other])


def test_dlq_stats_by_event_type_and_destination(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    add_dead(db, "crm", "lead.created", "HTTP 400")
    add_dead(db, "crm", "service.scheduled", "HTTP 400")
    add_dead(db, "operacao", "service.scheduled", "timeout: ReadTimeout")
    with client(make_settings(), dsn) as c:
        r = c.get("/dlq/stats", headers=admin)
    assert r.status_code == 200
    s = r.json()
    assert s["size"] == 3
    assert s["by_event_type"] == {"lead.created": 1, "service.scheduled": 2}
    assert s["by_destination"] == {"crm": 2, "operacao": 1}
    assert s["top_errors"][0] == {"error": "HTTP 400", "count": 2}


def test_dlq_endpoints_need_an_admin_key(dsn: str, db: psycopg.Connection) -> None:
    dead = add_dead(db)
    key = make_key(dsn, "crm-system", ["crm"])
    with client(make_settings(), dsn) as c:
        for method, path in [
            ("GET", "/dlq"),
            ("GET", "/dlq/stats"),
            ("GET", f"/dlq/{dead}"),
            ("POST", f"/dlq/{dead}/reprocess"),
            ("POST", f"/dlq/{dead}/archive"),
            ("POST", "/dlq/reprocess"),
            ("GET", "/status"),
        ]:
            assert c.request(method, path).status_code == 401, path
            assert c.request(method, path, headers=bearer(key)).status_code == 403, path
    assert db.execute("select status from deliveries where id = %s", (dead,)).fetchone() == (
        "dead",
    )


def test_dlq_list_json_is_what_the_schema_says(
    dsn: str, db: psycopg.Connection, admin: dict[str, str]
) -> None:
    from carinho_outbox.web.schemas import DlqPage

    add_dead(db)
    with client(make_settings(), dsn) as c:
        body = c.get("/dlq", headers=admin).json()
    DlqPage.model_validate(json.loads(json.dumps(body)))
