"""The scheduled syncs against real loopback stand-ins of the CRM, Operação and Financeiro:
idempotent across reruns, a page that fails mid-way, invoices computed by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote

import psycopg
import pytest

from carinho_outbox import syncs
from carinho_outbox.scheduler import apply_feedback_delay, enqueue_slot, periodic_jobs
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, ingest, running_worker
from tests.support.receiver import Received, Receiver, Reply


class Systems:
    """CRM, Operação and Financeiro behind one loopback server, by path prefix."""

    def __init__(self) -> None:
        self.contracts: list[dict[str, Any]] = []
        self.services: list[dict[str, Any]] = []
        self.fail_once: set[str] = set()  # "<path>?cursor=<c>" or "PUT <path>"
        self.failed: set[str] = set()

    def _page(
        self, items: list[dict[str, Any]], req: Received, since_key: str, field: str
    ) -> Reply:
        query = {k: v[0] for k, v in parse_qs(req.query).items()}
        since = query.get(since_key)
        chosen = [
            i for i in items
            if since is None
            or datetime.fromisoformat(i[field]) >= datetime.fromisoformat(since)
        ]  # fmt: skip
        start = int(query.get("cursor", "0"))
        limit = int(query["limit"])
        page = chosen[start : start + limit]
        nxt = str(start + limit) if start + limit < len(chosen) else None
        return Reply(200, json.dumps({"data": page, "next_cursor": nxt}))

    def script(self, req: Received, n: int) -> Reply:
        query = {k: v[0] for k, v in parse_qs(req.query).items()}
        key = f"{req.path}?cursor={query.get('cursor', '0')}" if req.method == "GET" else (
            f"{req.method} {unquote(req.path)}"
        )  # fmt: skip
        if key in self.fail_once and key not in self.failed:
            self.failed.add(key)
            return Reply(503, '{"error": "unavailable"}')
        if req.path == "/crm/contracts":
            return self._page(self.contracts, req, "updated_since", "updated_at")
        if req.path == "/op/services":
            assert query["status"] == "completed"
            return self._page(self.services, req, "updated_since", "updated_at")
        if req.path.startswith("/op/schedules/") and req.path.endswith("/cancel"):
            return Reply(404 if "never" in req.path else 200, "{}")
        if req.path.startswith(("/op/schedules/", "/fin/invoices/")):
            return Reply(200, "{}")
        return Reply(404, '{"error": "no such path"}')


@pytest.fixture
def systems(receiver: Receiver) -> Systems:
    s = Systems()
    receiver.script = s.script
    return s


def sync_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "CRM_API_URL": receiver.url("/crm"),
        "CRM_API_TOKEN": "crm-tok",
        "OPERACAO_API_URL": receiver.url("/op"),
        "OPERACAO_API_TOKEN": "op-tok",
        "FINANCEIRO_API_URL": receiver.url("/fin"),
        "FINANCEIRO_API_TOKEN": "fin-tok",
        **extra,
    }


def contract(cid: str, status: str, updated: str, **kw: Any) -> dict[str, Any]:
    return {"id": cid, "client_id": "c-1", "status": status, "updated_at": updated, **kw}


def runs(db: psycopg.Connection, job: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "select status, pages, counts, cursor_after, error from sync_runs where job = %s"
        " order by id",
        (job,),
    ).fetchall()


def calls(receiver: Receiver, prefix: str) -> list[Received]:
    return [r for r in receiver.requests if r.path.startswith(prefix)]


async def test_crm_sync_runs_as_a_job_survives_a_failed_page_and_sends_each_schedule_once(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver, systems: Systems
) -> None:
    systems.contracts = [
        contract("ct-1", "active", "2025-11-10T10:00:00-03:00", caregiver_id="cg-1",
                 starts_on="2025-11-17",
                 schedule={"weekdays": ["seg", "qua", "sex"], "shift_start": "08:00",
                           "shift_end": "20:00"}),
        contract("ct-2", "ativo", "2025-11-10T10:05:00-03:00",
                 schedule={"weekdays": [6, 7], "shift_start": "19:00", "shift_end": "07:00"}),
        contract("ct-3", "draft", "2025-11-10T10:10:00-03:00"),
        contract("ct-4", "cancelled", "2025-11-10T10:20:00-03:00"),
        contract("ct-5", "active", "2025-11-10T10:30:00-03:00"),  # no schedule: invalid
    ]  # fmt: skip
    systems.fail_once = {"/crm/contracts?cursor=2"}
    settings = make_settings(**sync_env(receiver), SYNC_PAGE_LIMIT="2")
    assert syncs.CRM_JOB in [j.name for j in periodic_jobs(settings)]
    slot = datetime(2025, 11, 10, 14, 0, tzinfo=UTC)
    assert await enqueue_slot(store, syncs.CRM_JOB, slot)
    assert not await enqueue_slot(store, syncs.CRM_JOB, slot)  # a second scheduler: no-op
    async with running_worker(settings, store, dsn):
        await eventually(
            lambda: (
                db.execute(
                    "select status from deliveries where destination = %s", (syncs.CRM_JOB,)
                ).fetchone()
                == ("delivered",)
            )
        )
    attempts = db.execute(
        "select attempts from deliveries where destination = %s", (syncs.CRM_JOB,)
    ).fetchone()
    assert attempts == (2,)

    op = calls(receiver, "/op/")
    assert [(r.method, r.path) for r in op] == [
        ("PUT", "/op/schedules/ct-1"),
        ("PUT", "/op/schedules/ct-2"),
        ("POST", "/op/schedules/ct-4/cancel"),
    ]
    assert op[0].headers["authorization"] == "Bearer op-tok"
    assert op[0].json == {
        "contract_id": "ct-1",
        "client_id": "c-1",
        "weekdays": [1, 3, 5],
        "shift_start": "08:00",
        "shift_end": "20:00",
        "overnight": False,
        "timezone": "America/Sao_Paulo",
        "caregiver_id": "cg-1",
        "starts_on": "2025-11-17",
        "ends_on": None,
        "source": "crm",
        "source_updated_at": "2025-11-10T10:00:00-03:00",
    }
    assert op[1].json["overnight"] is True and op[1].json["caregiver_id"] is None
    cancel = op[2].json
    assert cancel["reason"] == "contract_cancelled" and "cancel_from" in cancel
    crm = calls(receiver, "/crm/")
    assert all(r.headers["authorization"] == "Bearer crm-tok" for r in crm)
    assert parse_qs(crm[0].query) == {"limit": ["2"]}  # the first run has no cursor

    got = runs(db, syncs.CRM_JOB)
    assert [(r[0], r[1]) for r in got] == [("failed", 1), ("ok", 3)]
    assert got[0][2] == {"fetched": 2, "upserted": 2}
    assert got[0][3] is None and "HTTP 503" in got[0][4]
    assert got[1][2] == {
        "fetched": 5,
        "unchanged": 2,
        "ignored": 1,
        "cancelled": 1,
        "invalid": 1,
        "invalid_ids": ["ct-5: an active contract needs a schedule"],
    }
    assert got[1][3] == "2025-11-10T10:30:00-03:00"

    # A rerun asks from the cursor and sends nothing: ct-5 is the only one at or after it.
    before = len(receiver.requests)
    result = await syncs.sync_crm_to_operacao(store, settings, {})
    assert result["fetched"] == 1
    new = receiver.requests[before:]
    assert [r.path for r in new] == ["/crm/contracts"]
    assert parse_qs(new[0].query)["updated_since"] == ["2025-11-10T10:30:00-03:00"]

    # A caregiver is assigned in the CRM: exactly that schedule is sent again.
    systems.contracts[0] = {
        **systems.contracts[0],
        "caregiver_id": "cg-7",
        "updated_at": "2025-11-11T09:00:00-03:00",
    }
    before = len(receiver.requests)
    await syncs.sync_crm_to_operacao(store, settings, {})
    again = [r for r in receiver.requests[before:] if r.path.startswith("/op/")]
    assert [(r.method, r.path, r.json["caregiver_id"]) for r in again] == [
        ("PUT", "/op/schedules/ct-1", "cg-7")
    ]
    assert runs(db, syncs.CRM_JOB)[-1][3] == "2025-11-11T09:00:00-03:00"


def service(sid: str, client: str, start: str, end: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "client_id": client,
        "caregiver_id": kw.pop("caregiver_id", "cg-1"),
        "started_at": start,
        "ended_at": end,
        "scheduled_start": start,
        "scheduled_end": kw.pop("scheduled_end", end),
        "completed_at": end,
        "updated_at": kw.pop("updated_at", end),
        **kw,
    }


# The week of 17-23 Nov 2025 (see tests/unit/test_billing.py for the arithmetic): a night
# shift, the 20th (a national holiday), a Saturday night and a Sunday with extra hours.
WEEK = [
    service("s1", "c-1", "2025-11-17T08:00:00-03:00", "2025-11-17T20:00:00-03:00"),
    service("s2", "c-1", "2025-11-18T20:00:00-03:00", "2025-11-19T08:00:00-03:00"),
    service("s6", "c-2", "2025-11-19T09:00:00-03:00", "2025-11-19T13:00:00-03:00"),
    service("s3", "c-1", "2025-11-20T08:00:00-03:00", "2025-11-20T14:00:00-03:00",
            caregiver_id="cg-2", extras=[{"code": "acompanhamento_consulta", "quantity": 1}]),
    service("s5", "c-1", "2025-11-22T21:53:00-03:00", "2025-11-22T23:00:00-03:00"),
    service("s4", "c-1", "2025-11-23T08:00:00-03:00", "2025-11-23T18:30:00-03:00",
            scheduled_end="2025-11-23T16:00:00-03:00",
            extras=[{"code": "curativo", "quantity": 2}]),
    service("s7", "c-1", "2025-12-01T08:00:00-03:00", "2025-12-01T10:00:00-03:00"),
]  # fmt: skip
# As the stand-in sees them (decoded; the hub sends the key percent-encoded).
KEY_C1_NOV = "/fin/invoices/carinho:c-1:2025-11"
KEY_C1_DEC = "/fin/invoices/carinho:c-1:2025-12"
KEY_C2_NOV = "/fin/invoices/carinho:c-2:2025-11"


async def test_financeiro_sync_bills_each_service_once_and_sends_one_invoice_per_client_period(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver, systems: Systems
) -> None:
    systems.services = list(WEEK)
    systems.fail_once = {"/op/services?cursor=3", "PUT /fin/invoices/carinho:c-2:2025-11"}
    settings = make_settings(**sync_env(receiver), SYNC_PAGE_LIMIT="3")
    run = syncs.sync_operacao_to_financeiro

    # Run 1: page 2 fails. Page 1 is billed (and stays billed), nothing is invoiced yet.
    with pytest.raises(syncs.SyncError, match="HTTP 503"):
        await run(store, settings, {})
    assert calls(receiver, "/fin/") == []
    assert db.execute("select count(*) from billed_services").fetchone() == (3,)

    # Run 2: every page; three invoices; Financeiro fails c-2's once.
    with pytest.raises(syncs.SyncError, match="1 invoice"):
        await run(store, settings, {})
    puts = calls(receiver, "/fin/")
    assert [r.path for r in puts] == [KEY_C1_NOV, KEY_C1_DEC, KEY_C2_NOV]
    assert puts[0].method == "PUT" and puts[0].headers["authorization"] == "Bearer fin-tok"
    nov = puts[0].json
    assert nov["external_key"] == "carinho:c-1:2025-11"
    assert (nov["client_id"], nov["period"], nov["currency"]) == ("c-1", "2025-11", "BRL")
    assert nov["total_cents"] == 227607  # R$ 2.276,07, by hand in test_billing.py
    assert nov["payout_total_cents"] == 136564
    assert nov["payouts"] == [
        {"caregiver_id": "cg-1", "amount_cents": 104164, "service_ids": ["s1", "s2", "s5", "s4"]},
        {"caregiver_id": "cg-2", "amount_cents": 32400, "service_ids": ["s3"]},
    ]
    assert [s["service_id"] for s in nov["services"]] == ["s1", "s2", "s3", "s5", "s4"]
    assert len(nov["lines"]) == 13
    assert sum(line["amount_cents"] for line in nov["lines"]) == 227607
    assert puts[1].json["total_cents"] == 8000 and puts[1].json["payout_total_cents"] == 4800
    second = runs(db, syncs.FINANCEIRO_JOB)[1]
    assert second[0] == "ok" and second[2]["billed"] == 4 and second[2]["already_billed"] == 3
    assert second[2]["invoices_sent"] == 2 and second[3] == "2025-12-01T10:00:00-03:00"

    # Run 3: nothing new to bill; the invoice that failed is sent now.
    result = await run(store, settings, {})
    assert result["already_billed"] == 1 and "billed" not in result
    puts = calls(receiver, "/fin/")
    assert [r.path for r in puts[3:]] == [KEY_C2_NOV]
    assert puts[3].json == {
        "external_key": "carinho:c-2:2025-11",
        "client_id": "c-2",
        "period": "2025-11",
        "currency": "BRL",
        "total_cents": 16000,
        "payout_total_cents": 9600,
        "services": [
            {
                "service_id": "s6",
                "caregiver_id": "cg-1",
                "started_at": "2025-11-19T12:00:00+00:00",
                "ended_at": "2025-11-19T16:00:00+00:00",
                "amount_cents": 16000,
                "payout_cents": 9600,
            }
        ],
        "lines": [
            {
                "service_id": "s6",
                "code": "hours",
                "description": "Horas de cuidado",
                "quantity": 240,
                "unit": "minutes",
                "amount_cents": 16000,
                "unit_cents": 4000,
            }
        ],
        "payouts": [{"caregiver_id": "cg-1", "amount_cents": 9600, "service_ids": ["s6"]}],
    }

    # Run 4: a rerun of the same data bills nothing and sends nothing.
    await run(store, settings, {})
    assert len(calls(receiver, "/fin/")) == 4
    # Operação re-sends an old service: still billed once.
    systems.services.append({**WEEK[0], "updated_at": "2025-12-02T00:00:00-03:00"})
    result = await run(store, settings, {})
    assert result["already_billed"] >= 1 and "billed" not in result
    assert len(calls(receiver, "/fin/")) == 4
    totals = db.execute(
        "select client_id, period, pushed_total_cents, dirty from invoices order by 1, 2"
    ).fetchall()
    assert totals == [
        ("c-1", "2025-11", 227607, False),
        ("c-1", "2025-12", 8000, False),
        ("c-2", "2025-11", 16000, False),
    ]
    assert db.execute("select count(*), sum(amount_cents) from billed_services").fetchone() == (
        7,
        227607 + 8000 + 16000,
    )

    # A November service recorded late: the November invoice is sent again, whole, with it.
    systems.services.append(
        service("s8", "c-1", "2025-11-28T09:00:00-03:00", "2025-11-28T10:00:00-03:00",
                updated_at="2025-12-03T08:00:00-03:00")
    )  # fmt: skip
    await run(store, settings, {})
    last = calls(receiver, "/fin/")[-1]
    assert last.path == KEY_C1_NOV and last.json["total_cents"] == 227607 + 4000


async def test_one_run_at_a_time_and_a_stale_run_is_abandoned(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver, systems: Systems
) -> None:
    settings = make_settings(**sync_env(receiver))
    db.execute("insert into sync_runs (job) values (%s)", (syncs.CRM_JOB,))
    assert await syncs.sync_crm_to_operacao(store, settings, {}) == {
        "skipped": "another run of this job is in progress"
    }
    assert calls(receiver, "/crm/") == []
    db.execute("update sync_runs set started_at = now() - interval '2 hours'")
    result = await syncs.sync_crm_to_operacao(store, settings, {})
    assert result["pages"] == 1
    assert [r[0] for r in runs(db, syncs.CRM_JOB)] == ["abandoned", "ok"]


async def test_unconfigured_syncs_are_not_scheduled_and_refuse_to_run(
    dsn: str, store: Store
) -> None:
    settings = make_settings()
    assert [j.name for j in periodic_jobs(settings)] == ["retention", "alerts"]
    with pytest.raises(syncs.SyncError, match="CRM_API_URL"):
        await syncs.sync_crm_to_operacao(store, settings, {})


async def test_feedback_delay_setting_is_written_to_the_routes_with_history(
    dsn: str, store: Store, db: psycopg.Connection
) -> None:
    assert await apply_feedback_delay(store, make_settings()) == []
    settings = make_settings(FEEDBACK_DELAY_S="600")
    assert len(await apply_feedback_delay(store, settings)) == 2
    assert await apply_feedback_delay(store, settings) == []  # already so: no write
    history = db.execute(
        "select destination, changed_by, (new_row ->> 'delay_s')::int from routes_history"
        " where event_type = 'service.completed' and op = 'update' order by id"
    ).fetchall()
    assert history == [
        ("whatsapp", "settings:FEEDBACK_DELAY_S", 600),
        ("email", "settings:FEEDBACK_DELAY_S", 600),
    ]
    event_id, _, _ = await ingest(
        store,
        "service.completed",
        {"service_id": "s", "client_id": "c", "caregiver_id": "g",
         "completed_at": "2026-01-01T10:00:00-03:00"},
        "operacao",
    )  # fmt: skip
    delays = db.execute(
        "select d.destination, d.available_at - e.received_at from deliveries d"
        " join events e on e.id = d.event_id where e.id = %s and d.destination in"
        " ('whatsapp', 'email') order by 1",
        (event_id,),
    ).fetchall()
    assert delays == [("email", timedelta(seconds=600)), ("whatsapp", timedelta(seconds=600))]
