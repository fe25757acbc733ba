"""The scheduled syncs, run by workers as `job.<name>` deliveries (see jobs.py): they inherit
retries with backoff, the DLQ and the logs. Each run is a `sync_runs` row (cursor before and
after, pages, counts, error); one run per job at a time across all workers.

- ``sync_crm_to_operacao`` (hourly): contracts changed in the CRM since the cursor, page by
  page; an active contract becomes its schedule in Operação (PUT, idempotent by contract id),
  a cancelled one cancels its future schedule. What was sent per contract is remembered by
  fingerprint, so a rerun (or a page fetched again after a failure) sends nothing twice.
- ``sync_operacao_to_financeiro`` (daily): services completed since the cursor are billed
  (billing.py) into ``billed_services`` (once per service, whatever reruns), and every invoice
  that gained a service is sent whole to Financeiro (PUT, idempotent by its external key).

The cursor moves only when a run got through every page, to the newest ``updated_at`` the
source sent (the source's clock, not ours); the next run asks from there
inclusive, and the fingerprints / the primary key absorb the overlap. A failing page fails the
run (the job is retried); what earlier pages did stays done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx

from .billing import BillingError, Rates, bill_service, invoice_document, national_holidays
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)

CRM_JOB = "sync_crm_to_operacao"
FINANCEIRO_JOB = "sync_operacao_to_financeiro"
MAX_LISTED_IDS = 20  # ids kept in a run's counts per problem kind
INVOICE_PUSH_BATCH = 200
MAX_INVOICE_BATCHES = 50
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_WEEKDAYS = {
    "mon": 1, "seg": 1, "segunda": 1,
    "tue": 2, "ter": 2, "terca": 2, "terça": 2,
    "wed": 3, "qua": 3, "quarta": 3,
    "thu": 4, "qui": 4, "quinta": 4,
    "fri": 5, "sex": 5, "sexta": 5,
    "sat": 6, "sab": 6, "sáb": 6, "sabado": 6, "sábado": 6,
    "sun": 7, "dom": 7, "domingo": 7,
}  # fmt: skip
ACTIVE = frozenset({"active", "ativo"})
CANCELLED = frozenset({"cancelled", "canceled", "cancelado", "terminated", "encerrado"})


class SyncError(RuntimeError):
    """The run cannot go on (a source page failed, a destination is down)."""


class ContractError(ValueError):
    """One contract cannot be mapped to a schedule; the others still are."""


# --- pure mapping ---------------------------------------------------------------------------


def weekdays(value: object) -> list[int]:
    """ISO weekdays (1 = Monday … 7 = Sunday) from numbers or pt/en names."""
    if not isinstance(value, list) or not value:
        raise ContractError("schedule.weekdays must be a non-empty list")
    out: set[int] = set()
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and 1 <= item <= 7:
            out.add(item)
        elif isinstance(item, str) and item.strip().lower() in _WEEKDAYS:
            out.add(_WEEKDAYS[item.strip().lower()])
        else:
            raise ContractError(f"schedule.weekdays: {item!r} is not a weekday")
    return sorted(out)


def schedule_action(contract: dict[str, Any], tz_name: str) -> tuple[str, dict[str, Any]]:
    """('upsert' | 'cancel' | 'ignore', request body) for one CRM contract."""
    contract_id = contract.get("id")
    client_id = contract.get("client_id")
    status = str(contract.get("status") or "").strip().lower()
    if not contract_id or not client_id:
        raise ContractError("id and client_id are required")
    if status in CANCELLED:
        return "cancel", {
            "contract_id": str(contract_id),
            "client_id": str(client_id),
            "reason": str(contract.get("cancel_reason") or "contract_cancelled"),
        }
    if status not in ACTIVE:
        return "ignore", {}
    schedule = contract.get("schedule")
    if not isinstance(schedule, dict):
        raise ContractError("an active contract needs a schedule")
    start, end = schedule.get("shift_start"), schedule.get("shift_end")
    for name, value in (("shift_start", start), ("shift_end", end)):
        if not isinstance(value, str) or not _HHMM.match(value):
            raise ContractError(f"schedule.{name} must be HH:MM")
    assert isinstance(start, str) and isinstance(end, str)
    if start == end:
        raise ContractError("schedule.shift_end equals shift_start")
    caregiver = contract.get("caregiver_id")
    return "upsert", {
        "contract_id": str(contract_id),
        "client_id": str(client_id),
        "weekdays": weekdays(schedule.get("weekdays")),
        "shift_start": start,
        "shift_end": end,
        # A shift ending at or before its start crosses midnight (a 19:00-07:00 night shift).
        "overnight": end < start,
        "timezone": str(schedule.get("timezone") or tz_name),
        "caregiver_id": str(caregiver) if caregiver else None,
        "starts_on": contract.get("starts_on"),
        "ends_on": contract.get("ends_on"),
    }


def fingerprint(action: str, body: dict[str, Any]) -> str:
    raw = json.dumps({"action": action, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def later_cursor(current: str | None, candidate: object) -> str | None:
    """The newer of two ISO timestamps, as the source wrote it."""
    new = _moment(candidate)
    if new is None:
        return current
    old = _moment(current)
    return candidate if old is None or new > old else current  # type: ignore[return-value]


def _note(counts: Counter[str], listed: dict[str, list[str]], kind: str, item: str) -> None:
    counts[kind] += 1
    ids = listed.setdefault(f"{kind}_ids", [])
    if len(ids) < MAX_LISTED_IDS:
        ids.append(item)


# --- HTTP -------------------------------------------------------------------------------------


def _client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.request_timeout_s),
        follow_redirects=False,
        headers={"user-agent": "carinho-outbox", "accept": "application/json"},
    )


def _auth(token: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {token.get_secret_value()}"} if token else {}


def _transient(status: int) -> bool:
    return status in (408, 409, 425, 429) or status >= 500


async def fetch_pages(
    client: httpx.AsyncClient,
    url: str,
    params: dict[str, str],
    headers: dict[str, str],
    *,
    limit: int,
    max_pages: int,
    what: str,
) -> AsyncIterator[list[Any]]:
    """Yield each page's items; a failed page raises SyncError (the run fails there)."""
    page_cursor: str | None = None
    for _ in range(max_pages):
        query = {**params, "limit": str(limit)}
        if page_cursor:
            query["cursor"] = page_cursor
        try:
            response = await client.get(url, params=query, headers=headers)
        except httpx.HTTPError as exc:
            raise SyncError(f"{what}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SyncError(f"{what}: HTTP {response.status_code}")
        try:
            doc = response.json()
        except ValueError:
            raise SyncError(f"{what}: the answer is not JSON") from None
        items = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise SyncError(f"{what}: the answer has no 'data' list")
        yield items
        page_cursor = doc.get("next_cursor")
        if not page_cursor:
            return
    raise SyncError(f"{what}: more than SYNC_MAX_PAGES ({max_pages}) pages")


RunBody = Callable[[int, dict[str, Any]], Awaitable[str | None]]


async def _run(store: Store, settings: Settings, job: str, body: RunBody) -> dict[str, Any]:
    """Open the run row, run `body(run_id, cursor)`, close the row with its outcome."""
    started = await store.sync_run_start(job=job, stale_s=settings.sync_stale_s)
    if started is None:
        log.info("sync already running", extra={"action": "sync_busy", "job": job})
        return {"skipped": "another run of this job is in progress"}
    run_id, cursor = started
    state: dict[str, Any] = {"pages": 0, "counts": Counter(), "listed": {}, "cursor": cursor}
    try:
        error = await body(run_id, state)
    except Exception as exc:
        counts = {**state["counts"], **state["listed"]}
        await store.sync_run_finish(
            id=run_id,
            status="failed",
            pages=state["pages"],
            counts=counts,
            error=f"{type(exc).__name__}: {exc}",
            cursor_after=None,
        )
        log.warning(
            "sync failed",
            extra={"action": "sync_failed", "job": job, "run_id": run_id, "counts": counts},
        )
        raise
    counts = {**state["counts"], **state["listed"]}
    await store.sync_run_finish(
        id=run_id,
        status="ok",
        pages=state["pages"],
        counts=counts,
        error=error,
        cursor_after=state["cursor"],
    )
    log.info(
        "sync finished",
        extra={"action": "sync_finished", "job": job, "run_id": run_id, "counts": counts},
    )
    if error:
        # Done and recorded, cursor moved; the job is retried for what is still pending.
        raise SyncError(error)
    return {"run_id": run_id, "pages": state["pages"], **counts}


# --- CRM → Operação ---------------------------------------------------------------------------


async def sync_crm_to_operacao(
    store: Store, settings: Settings, payload: dict[str, Any]
) -> dict[str, Any]:
    if not settings.crm_api_url or not settings.operacao_api_url:
        raise SyncError("CRM_API_URL and OPERACAO_API_URL must be set")
    crm = settings.crm_api_url.rstrip("/")
    operacao = settings.operacao_api_url.rstrip("/")
    crm_headers = _auth(settings.crm_api_token)
    op_headers = {"content-type": "application/json", **_auth(settings.operacao_api_token)}

    async def body(run_id: int, state: dict[str, Any]) -> str | None:
        counts: Counter[str] = state["counts"]
        listed: dict[str, list[str]] = state["listed"]
        since = state["cursor"]
        newest = since
        params = {"updated_since": since} if since else {}
        async with _client(settings) as client:
            async for page in fetch_pages(
                client,
                f"{crm}/contracts",
                params,
                crm_headers,
                limit=settings.sync_page_limit,
                max_pages=settings.sync_max_pages,
                what="CRM GET /contracts",
            ):
                state["pages"] += 1
                for contract in page:
                    counts["fetched"] += 1
                    contract = contract if isinstance(contract, dict) else {}
                    cid = str(contract.get("id") or "?")
                    try:
                        action, request = schedule_action(contract, settings.billing_tz)
                    except ContractError as exc:
                        _note(counts, listed, "invalid", f"{cid}: {exc}")
                        newest = later_cursor(newest, contract.get("updated_at"))
                        continue
                    if action == "ignore":
                        counts["ignored"] += 1
                        newest = later_cursor(newest, contract.get("updated_at"))
                        continue
                    mark = fingerprint(action, request)
                    known = await store.synced_contract(contract_id=cid)
                    if known is not None and known["fingerprint"] == mark:
                        counts["unchanged"] += 1
                        newest = later_cursor(newest, contract.get("updated_at"))
                        continue
                    sent = await _send_schedule(
                        client, operacao, op_headers, action, cid, request, contract
                    )
                    if sent:
                        await store.synced_contract_save(
                            contract_id=cid,
                            action=action,
                            fingerprint=mark,
                            source_updated_at=str(contract.get("updated_at") or "") or None,
                        )
                        counts["upserted" if action == "upsert" else "cancelled"] += 1
                    else:
                        _note(counts, listed, "rejected", cid)
                    newest = later_cursor(newest, contract.get("updated_at"))
        state["cursor"] = newest
        return None

    return await _run(store, settings, CRM_JOB, body)


async def _send_schedule(
    client: httpx.AsyncClient,
    operacao: str,
    headers: dict[str, str],
    action: str,
    contract_id: str,
    request: dict[str, Any],
    contract: dict[str, Any],
) -> bool:
    """True when Operação took it; False when it refused this contract (a 4xx); raises when
    Operação is unavailable (the run fails and is retried)."""
    path = quote(contract_id, safe="")
    document = {**request, "source": "crm", "source_updated_at": contract.get("updated_at")}
    try:
        if action == "upsert":
            response = await client.put(
                f"{operacao}/schedules/{path}", content=json.dumps(document), headers=headers
            )
        else:
            document["cancel_from"] = datetime.now(UTC).isoformat()
            response = await client.post(
                f"{operacao}/schedules/{path}/cancel",
                content=json.dumps(document),
                headers=headers,
            )
    except httpx.HTTPError as exc:
        raise SyncError(f"Operação {action}: {type(exc).__name__}") from None
    if 200 <= response.status_code < 300:
        return True
    if action == "cancel" and response.status_code == 404:
        return True  # nothing was scheduled: nothing left to cancel
    if _transient(response.status_code):
        raise SyncError(f"Operação {action}: HTTP {response.status_code}")
    log.warning(
        "operacao refused a schedule",
        extra={
            "action": "sync_rejected",
            "contract_id": contract_id,
            "http_status": response.status_code,
        },
    )
    return False


# --- Operação → Financeiro ----------------------------------------------------------------


def invoice_key(client_id: str, period: str) -> str:
    return f"carinho:{client_id}:{period}"


async def sync_operacao_to_financeiro(
    store: Store, settings: Settings, payload: dict[str, Any]
) -> dict[str, Any]:
    if not settings.operacao_api_url or not settings.financeiro_api_url:
        raise SyncError("OPERACAO_API_URL and FINANCEIRO_API_URL must be set")
    operacao = settings.operacao_api_url.rstrip("/")
    financeiro = settings.financeiro_api_url.rstrip("/")
    op_headers = _auth(settings.operacao_api_token)
    fin_headers = {"content-type": "application/json", **_auth(settings.financeiro_api_token)}
    tz = ZoneInfo(settings.billing_tz)

    async def body(run_id: int, state: dict[str, Any]) -> str | None:
        counts: Counter[str] = state["counts"]
        listed: dict[str, list[str]] = state["listed"]
        rates = Rates.from_rows(await store.billing_rates())
        extra_days = await store.billing_holidays(first=date(1900, 1, 1), last=date(2999, 12, 31))
        holiday_cache: dict[int, set[date]] = {}

        def holidays_for(year: int) -> set[date]:
            if year not in holiday_cache:
                # A service can cross New Year: the neighbouring years come along.
                days = set(national_holidays(year - 1)) | set(national_holidays(year))
                days |= set(national_holidays(year + 1))
                holiday_cache[year] = days | extra_days
            return holiday_cache[year]

        since = state["cursor"]
        newest = since
        # updated_since, not completed_since: a completion recorded late (a caregiver who
        # checked out from the office the next day) still comes after the cursor.
        params = {"status": "completed", **({"updated_since": since} if since else {})}
        async with _client(settings) as client:
            async for page in fetch_pages(
                client,
                f"{operacao}/services",
                params,
                op_headers,
                limit=settings.sync_page_limit,
                max_pages=settings.sync_max_pages,
                what="Operação GET /services",
            ):
                state["pages"] += 1
                for service in page:
                    counts["fetched"] += 1
                    service = service if isinstance(service, dict) else {}
                    sid = str(service.get("id") or "?")
                    started = _moment(service.get("started_at") or service.get("scheduled_start"))
                    try:
                        billed = bill_service(
                            service, rates, tz, holidays_for(started.year if started else 2000)
                        )
                    except BillingError as exc:
                        _note(counts, listed, "invalid", f"{sid}: {exc}")
                    else:
                        fresh = await store.bill_service(
                            service_id=billed.service_id,
                            client_id=billed.client_id,
                            caregiver_id=billed.caregiver_id,
                            period=billed.period,
                            started_at=billed.started_at,
                            ended_at=billed.ended_at,
                            lines=billed.lines,
                            amount_cents=billed.amount_cents,
                            payout_cents=billed.payout_cents,
                            run_id=run_id,
                            external_key=invoice_key(billed.client_id, billed.period),
                        )
                        counts["billed" if fresh else "already_billed"] += 1
                    newest = later_cursor(
                        newest, service.get("updated_at") or service.get("completed_at")
                    )
            state["cursor"] = newest
            failed = await _push_invoices(store, client, financeiro, fin_headers, counts, listed)
        if failed:
            return f"{failed} invoice(s) could not be sent to Financeiro; they stay pending"
        return None

    return await _run(store, settings, FINANCEIRO_JOB, body)


async def _push_invoices(
    store: Store,
    client: httpx.AsyncClient,
    financeiro: str,
    headers: dict[str, str],
    counts: Counter[str],
    listed: dict[str, list[str]],
) -> int:
    """PUT every invoice that gained a service; returns how many failed (they stay dirty)."""
    failed: set[tuple[str, str]] = set()
    for _ in range(MAX_INVOICE_BATCHES):
        dirty = [
            d
            for d in await store.invoices_dirty(limit=INVOICE_PUSH_BATCH + len(failed))
            if (d["client_id"], d["period"]) not in failed
        ]
        if not dirty:
            break
        for inv in dirty:
            client_id, period = inv["client_id"], inv["period"]
            services = await store.invoice_services(client_id=client_id, period=period)
            doc = invoice_document(
                external_key=inv["external_key"],
                client_id=inv["client_id"],
                period=inv["period"],
                services=services,
            )
            error: str | None = None
            try:
                response = await client.put(
                    f"{financeiro}/invoices/{quote(inv['external_key'], safe='')}",
                    content=json.dumps(doc, ensure_ascii=False).encode(),
                    headers=headers,
                )
                if not 200 <= response.status_code < 300:
                    error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            if error is None:
                await store.invoice_pushed(
                    client_id=inv["client_id"],
                    period=inv["period"],
                    version=inv["version"],
                    total_cents=doc["total_cents"],
                )
                counts["invoices_sent"] += 1
            else:
                await store.invoice_push_failed(
                    client_id=inv["client_id"], period=inv["period"], error=error
                )
                failed.add((inv["client_id"], inv["period"]))
                _note(counts, listed, "invoice_failed", f"{inv['external_key']}: {error}")
    return len(failed)
