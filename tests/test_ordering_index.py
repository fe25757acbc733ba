"""sql/0013: deliveries_ordering leads with the ordering key, so a prepared ingest_event whose
generic plan was made on an empty table still probes a narrow range as the backlog grows
(on the old (destination, ordering_key, id) order it scanned the whole index per event)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from carinho_outbox.queries import q
from tests.support.samples import PAYLOADS

EVENTS = 3000


def ingest_params(n: int) -> dict[str, Any]:
    payload = {**PAYLOADS["payment.received"], "client_id": f"cli-{n:06d}"}
    return {
        "notify": False,
        "type": "payment.received",
        "source": "financeiro",
        "payload": Jsonb(payload),
        "idempotency_key": None,
        "occurred_at": None,
        "request_id": None,
        "client": "test",
        "ordering_key": f"client_id:cli-{n:06d}",
        "extra_delay_s": None,
    }


def index_nodes(plan: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Index Name") == name else []
    for child in plan.get("Plans", []):
        found.extend(index_nodes(child, name))
    return found


def test_a_plan_cached_on_an_empty_table_keeps_the_ordering_probe_narrow(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        # The generic plan is made at the first execution, on an empty deliveries table, and
        # kept: what a web process started after a TRUNCATE or on a fresh install runs.
        conn.execute("set plan_cache_mode = force_generic_plan")
        for n in range(EVENTS):
            conn.execute(q("ingest_event"), ingest_params(n))
        name = conn.execute(
            "select name from pg_prepared_statements where statement like %s",
            ["%insert into events (type, source, payload%"],
        ).fetchone()
        assert name is not None
        params = ingest_params(EVENTS + 1)
        # Parameter order of the prepared statement: first appearance in the text. EXECUTE
        # takes its arguments as literals here (a bound $n would have no type to infer).
        args = sql.SQL(
            "false, 'payment.received', 'financeiro', {}::jsonb, null, null, null, 'test', null, {}"
        ).format(
            sql.Literal(json.dumps(params["payload"].obj)), sql.Literal(params["ordering_key"])
        )
        explain = sql.SQL("explain (analyze, buffers, format json) execute {}({})").format(
            sql.Identifier(name[0]), args
        )
        row = conn.execute(explain).fetchone()
    assert row is not None
    probes = index_nodes(row[0][0]["Plan"], "deliveries_ordering")
    assert probes, "the ordering check no longer uses deliveries_ordering"
    pending = EVENTS * 2  # two routes: every row pending with its own key, all in the index
    for probe in probes:
        touched = probe.get("Shared Hit Blocks", 0) + probe.get("Shared Read Blocks", 0)
        # A range of one key: a root-to-leaf descent. The whole index is ~pending/200 pages.
        assert touched <= 6, (touched, pending)
