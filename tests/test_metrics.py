"""`GET /metrics`: process counters, DB gauges read at scrape time, several processes adding
up through PROMETHEUS_MULTIPROC_DIR, and the shipped alert rules and Grafana dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from carinho_outbox import metrics
from carinho_outbox.records import Job, Outcome, SendResult
from tests.conftest import make_settings
from tests.support.ops import add_dead, add_delivery, add_event, add_live_worker
from tests.support.procs import ROOT, Proc, proc_env, wait_until
from tests.support.samples import PAYLOADS
from tests.support.web import bearer, client, make_key

DEPLOY = ROOT / "carinho_outbox" / "deploy"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def fake_outcome(status: str, destination: str = "crm", lag_s: float = 3.0) -> Outcome:
    now = datetime.now(UTC)
    job = Job(
        id=1,
        event_id=uuid4(),
        destination=destination,
        attempt=1,
        max_attempts=None,
        mapping_version=1,
        queue="default",
        type="lead.created",
        source="site",
        payload={},
        occurred_at=now,
        received_at=now - timedelta(seconds=lag_s),
    )
    return Outcome(job=job, status=status, result=SendResult(ok=True, duration_ms=42.0))  # type: ignore[arg-type]


def test_metrics_count_events_requests_outcomes_and_read_gauges_from_the_db(
    dsn: str, db: psycopg.Connection
) -> None:
    crm_key = make_key(dsn, "crm-system", ["crm"])
    add_live_worker(db)
    ev = add_event(db)
    add_delivery(db, ev, "operacao", "pending", due_in_s=-90)
    add_delivery(db, ev, "operacao", "pending", attempts=2, due_in_s=60)
    add_dead(db, "financeiro")
    settings = make_settings(DEST_OPERACAO_URL="http://127.0.0.1:9/op")
    with client(settings, dsn) as c:
        before = c.get("/metrics").text
        r = c.post(
            "/events",
            headers=bearer(crm_key),
            json={"type": "client.updated", "payload": PAYLOADS["client.updated"]},
        )
        assert r.status_code == 202
        c.get("/nowhere")
        metrics.observe_outcome(fake_outcome("delivered", "crm", lag_s=3.0))
        metrics.observe_outcome(fake_outcome("pending", "crm"))
        metrics.observe_outcome(fake_outcome("dead", "crm"))
        after_r = c.get("/metrics")
    assert after_r.status_code == 200
    assert after_r.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = after_r.text

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("carinho_events_received_total", type="client.updated", source="crm") == 1
    assert delta("carinho_http_requests_total", route="/events", method="POST", status="202") == 1
    assert delta("carinho_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta("carinho_deliveries_finished_total", destination="crm", outcome="delivered") == 1
    assert delta("carinho_deliveries_finished_total", destination="crm", outcome="dead") == 1
    assert delta("carinho_delivery_attempts_total", destination="crm", outcome="retry") == 1
    assert delta("carinho_attempt_duration_seconds_count", destination="crm") == 3
    assert delta("carinho_delivery_lag_seconds_count", destination="crm") == 1
    # 3 s lag falls in the 5 s bucket, not the 2.5 s one.
    assert delta("carinho_delivery_lag_seconds_bucket", destination="crm", le="5.0") == 1
    assert delta("carinho_delivery_lag_seconds_bucket", destination="crm", le="2.5") == 0

    # Gauges, read from the database at this scrape (the POST above added 2 pending rows).
    assert value(after, "carinho_db_up") == 1
    assert value(after, "carinho_deliveries", state="pending", destination="operacao") == 3
    assert value(after, "carinho_deliveries", state="retrying", destination="operacao") == 1
    assert value(after, "carinho_deliveries", state="dead", destination="financeiro") == 1
    assert value(after, "carinho_deliveries", state="pending", destination="crm") == 1
    assert value(after, "carinho_workers_alive") == 1
    assert 89 <= value(after, "carinho_oldest_pending_age_seconds") < 150


def test_metrics_need_an_admin_key_when_not_public(dsn: str) -> None:
    admin = make_key(dsn, "ops", [], admin=True)
    plain = make_key(dsn, "crm-system", ["crm"])
    with client(make_settings(METRICS_PUBLIC="false"), dsn) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer(plain)).status_code == 403
        ok = c.get("/metrics", headers={"X-API-Key": admin})
    assert ok.status_code == 200 and "carinho_db_up 1.0" in ok.text


WRITER = textwrap.dedent(
    """
    import sys
    from tests.test_metrics import fake_outcome
    from carinho_outbox import metrics
    for _ in range(int(sys.argv[1])):
        metrics.observe_outcome(fake_outcome("delivered", "cuidadores"))
    metrics.observe_event("payout.processed", ("financeiro",))
    """
)


@pytest.mark.slow
def test_counters_of_several_processes_add_up_in_multiprocess_mode(
    dsn: str, tmp_path: Path
) -> None:
    shared = tmp_path / "prom"
    shared.mkdir()
    env = proc_env(dsn, PROMETHEUS_MULTIPROC_DIR=str(shared))
    # Two "worker" processes record outcomes and exit; their counts must survive them.
    for n in (3, 4):
        done = subprocess.run(
            [sys.executable, "-c", WRITER, str(n)], env=env, cwd=ROOT, timeout=60, check=False
        )
        assert done.returncode == 0
    port = _free_port()
    web = Proc("carinho_outbox.web.serve", env, "--port", str(port), log=tmp_path / "web.log")
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str | None:
            try:
                r = httpx.get(url, timeout=2)
            except httpx.HTTPError:
                return None
            return r.text if r.status_code == 200 else None

        text = wait_until(scrape, timeout_s=30)
        # The web process counted its own request to /metrics in the same directory.
        text = wait_until(
            lambda: (
                (t := scrape())
                and value(
                    t, "carinho_http_requests_total", route="/metrics", method="GET", status="200"
                )
                >= 1
                and t
            ),
            timeout_s=10,
        )
    finally:
        web.terminate()
    assert (
        value(
            text, "carinho_deliveries_finished_total", destination="cuidadores", outcome="delivered"
        )
        == 7
    )
    assert (
        value(text, "carinho_events_received_total", type="payout.processed", source="financeiro")
        == 2
    )
    assert value(text, "carinho_db_up") == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


METRIC_NAME = re.compile(r"\bcarinho_[a-z_]+\b")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exposed_families(dsn: str) -> set[str]:
    with client(make_settings(), dsn) as c:
        text = c.get("/metrics").text
    return {family.name for family in text_string_to_metric_families(text)}


def test_shipped_alert_rules_and_dashboard_use_only_metrics_that_exist(dsn: str) -> None:
    families = exposed_families(dsn)
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 6
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["labels"]["severity"] in {"critical", "warning"}
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in METRIC_NAME.findall(e)}
    assert used, "no metric names found"
    missing = sorted(m for m in used if _base(m) not in families)
    assert missing == []
    # Every metric the process exposes is shown somewhere on the dashboard.
    on_dashboard = {_base(m) for e in exprs for m in METRIC_NAME.findall(e)}
    ours = {f for f in families if f.startswith("carinho_")}
    assert ours - on_dashboard == set()
