"""The one seam that runs SQL. Every statement comes from queries.sql by name."""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from .leads import LeadIngest, LeadMatch, LeadPlan, LeadRow, WrittenEvent, lock_keys
from .queries import q
from .records import BatchItem, Job, Outcome
from .wakeups import EdgeNotifier

log = logging.getLogger(__name__)

# Attempt rows keep a bounded slice of what the destination answered.
RESPONSE_KEEP_CHARS = 2000
# Concurrent edits of one mapping pair: how many times the losing statement is run again.
PAIR_RACE_ATTEMPTS = 5
# A batch ingest rolled back by a deadlock is run again this many times in all.
BATCH_DEADLOCK_ATTEMPTS = 3


def _text(text: str | None) -> str | None:
    # Postgres text cannot hold NUL; a destination answering one must not wedge the flush.
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def _clip(text: str | None, limit: int = RESPONSE_KEEP_CHARS) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit] + "…"


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # Short statements only on this path; a runaway query must not hold a pooled connection.
    await conn.execute("set statement_timeout = '30s'")
    await conn.execute("set lock_timeout = '5s'")
    # No JIT: it pays off on long analytic scans, which the hub never runs, while compiling a
    # plan whose cost estimate crosses jit_above_cost takes hundreds of milliseconds. The
    # /status statements cross it (their time ranges are parameters, so the planner assumes
    # wide ones) and spent 0.5 s compiling for a few milliseconds of work.
    await conn.execute("set jit = off")


# A pooled connection back in use within this many seconds is not tested on checkout: under
# load that test was an extra round trip before every statement (~15% of the web's CPU); a
# connection that sat idle longer (where a server restart or a proxy timeout bites) still is.
CHECK_IDLE_AFTER_S = 2.0

_returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection, float] = (
    weakref.WeakKeyDictionary()
)


async def _mark_returned(conn: psycopg.AsyncConnection) -> None:
    _returned_at[conn] = time.monotonic()


async def _check_if_idle(conn: psycopg.AsyncConnection) -> None:
    returned = _returned_at.get(conn)
    if returned is None or time.monotonic() - returned > CHECK_IDLE_AFTER_S:
        await AsyncConnectionPool.check_connection(conn)


def make_pool(
    dsn: str, *, max_size: int, timeout_s: float, name: str, check: bool = True
) -> AsyncConnectionPool:
    """check=True tests a connection on checkout when it sat idle for CHECK_IDLE_AFTER_S (the
    web: a request should not fail on a connection the server dropped overnight).
    check=False never tests: the worker (a statement on a dead connection fails, the pool
    discards it, and every worker loop retries)."""
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        timeout=timeout_s,
        name=name,
        open=False,
        configure=_configure,
        kwargs={"autocommit": True, "application_name": name},
        # A dead server must not make callers wait forever for a reconnect.
        reconnect_timeout=60.0,
        check=_check_if_idle if check else None,
        reset=_mark_returned if check else None,
    )


async def listen(dsn: str, on_ready: Callable[[], None]) -> AsyncIterator[str]:
    """Yield NOTIFY payloads (queue names) from a dedicated connection.

    LISTEN needs a session of its own: it cannot go through a pool or through PgBouncer in
    transaction mode. The caller reconnects when this raises.
    """
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, application_name="carinho-listen"
    ) as conn:
        await conn.execute(q("listen"))
        on_ready()
        async for notify in conn.notifies():
            yield notify.payload


def _job(r: dict[str, Any]) -> Job:
    return Job(
        id=r["id"],
        event_id=r["event_id"],
        destination=r["destination"],
        attempt=r["attempts"],
        max_attempts=r["max_attempts"],
        mapping_version=r["mapping_version"],
        queue=r["queue"],
        type=r["type"],
        source=r["source"],
        payload=r["payload"],
        occurred_at=r["occurred_at"],
        received_at=r["received_at"],
        ordering_key=r["ordering_key"],
    )


class Store:
    def __init__(self, pool: AsyncConnectionPool, wakeups: EdgeNotifier | None = None) -> None:
        self.pool = pool
        # Set in the web: autocommit ingests notify on the edges of a burst (wakeups.py).
        self.wakeups = wakeups

    async def notify_queues(self, queues: list[str]) -> None:
        await self._fetchall("notify_queues", {"queues": queues})

    async def _fetchall(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q(name), params)
            return await cur.fetchall()

    async def _fetchone(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q(name), params)
            return await cur.fetchone()

    async def _execute(self, name: str, params: dict[str, Any]) -> int:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(q(name), params)
            return cur.rowcount

    # --- ingress -------------------------------------------------------------------------

    async def ingest_event(
        self,
        *,
        type: str,
        source: str,
        payload: dict[str, Any],
        idempotency_key: str | None,
        occurred_at: datetime | None,
        request_id: str | None,
        client: str | None,
        ordering_key: str | None = None,
        extra_delay_s: float | None = None,
    ) -> tuple[UUID, list[str], bool]:
        """Write the event and its deliveries; returns (event id, destinations, duplicate)."""
        edges = self.wakeups
        notify = edges is None or edges.lead()
        row = await self._fetchone(
            "ingest_event",
            {
                "notify": notify,
                "type": type,
                "source": source,
                "payload": Jsonb(payload),
                "idempotency_key": idempotency_key,
                "occurred_at": occurred_at,
                "request_id": request_id,
                "client": client,
                "ordering_key": ordering_key,
                "extra_delay_s": extra_delay_s,
            },
        )
        if row and row["event_id"] is not None:
            if not notify and edges is not None:
                edges.trail(row["queues"])
            return row["event_id"], list(row["destinations"]), False
        first = await self._fetchone(
            "find_event_by_idempotency", {"source": source, "idempotency_key": idempotency_key}
        )
        if first is None:  # pragma: no cover - the conflict row cannot vanish (no deletes race)
            raise RuntimeError("idempotency conflict but no first event found")
        return first["event_id"], list(first["destinations"]), True

    async def ingest_batch(
        self,
        items: Sequence[BatchItem],
        *,
        request_id: str | None,
        client: str | None,
        notify: bool | None = None,
    ) -> tuple[list[tuple[UUID, list[str], bool]], list[str]]:
        """Write many events and their deliveries in one statement (one transaction).

        Returns, in item order, (event id, destinations, duplicate) like ingest_event, and the
        queues written to. A duplicate (of an earlier item or of a stored event) answers with
        the first event's id and destinations. notify None: the wake-up follows the same
        edges as ingest_event (wakeups.py); a bool forces the statement's own NOTIFY on/off.
        """
        edges = self.wakeups if notify is None else None
        if notify is None:
            notify = edges is None or edges.lead()
        params = {
            "types": [i.type for i in items],
            "sources": [i.source for i in items],
            "payloads": Jsonb([i.payload for i in items]),
            "idempotency_keys": [i.idempotency_key for i in items],
            "occurred_ats": [i.occurred_at for i in items],
            "ordering_keys": [i.ordering_key for i in items],
            "request_ids": [request_id if i.request_id is None else i.request_id for i in items],
            "clients": [client if i.client is None else i.client for i in items],
            "notify": notify,
        }
        for attempt in range(1, BATCH_DEADLOCK_ATTEMPTS + 1):
            try:
                rows = await self._fetchall("ingest_batch", params)
                break
            except psycopg.errors.DeadlockDetected:
                # Batches insert keys in one order and cannot deadlock each other; a webhook's
                # multi-event transaction sharing keys could. Postgres rolled this one back.
                if attempt == BATCH_DEADLOCK_ATTEMPTS:
                    raise
        written = {r["n"]: (r["event_id"], list(r["destinations"])) for r in rows}
        # Items whose key was already stored (a retried batch, typically): one lookup for all.
        stored = [r["n"] for r in rows if r["event_id"] is None and r["first_n"] == r["n"]]
        if stored:
            found = await self._fetchall(
                "find_events_by_idempotency",
                {
                    "sources": [items[n - 1].source for n in stored],
                    "idempotency_keys": [items[n - 1].idempotency_key for n in stored],
                },
            )
            by_key = {
                (f["source"], f["idempotency_key"]): (f["event_id"], list(f["destinations"]))
                for f in found
            }
            for n in stored:
                item = items[n - 1]
                first = by_key.get((item.source, item.idempotency_key))
                if first is None:  # pragma: no cover - a conflicting row does not vanish
                    raise RuntimeError("idempotency conflict but no first event found")
                written[n] = first
        out: list[tuple[UUID, list[str], bool]] = []
        for r in rows:
            event_id, destinations = written[r["first_n"]]
            out.append((event_id, destinations, r["event_id"] is None))
        queues = list(rows[0]["queues"]) if rows else []
        if not notify and edges is not None:
            edges.trail(queues)
        return out, queues

    async def event_types(self) -> dict[str, list[str]]:
        rows = await self._fetchall("list_event_types", {})
        return {r["type"]: list(r["sources"]) for r in rows}

    async def event_catalog(self) -> dict[str, tuple[list[str], list[str]]]:
        """type → (allowed sources, ordering key paths)."""
        rows = await self._fetchall("list_event_types", {})
        return {r["type"]: (list(r["sources"]), list(r["ordering_paths"])) for r in rows}

    async def routes(self) -> list[dict[str, Any]]:
        return await self._fetchall("list_routes", {})

    # --- worker --------------------------------------------------------------------------

    async def claim(
        self,
        *,
        worker: str,
        destinations: Sequence[str],
        queues: Sequence[str],
        limit: int,
        lease_s: float,
        max_wait_s: float = 300.0,
    ) -> list[Job]:
        rows = await self._fetchall(
            "claim_deliveries",
            {
                "worker": worker,
                "destinations": list(destinations),
                "queues": list(queues),
                "limit": limit,
                "aged_limit": max(1, limit // 4),
                "max_wait_s": max_wait_s,
                "lease_s": lease_s,
            },
        )
        return [_job(r) for r in rows]

    async def claim_destination(
        self,
        *,
        worker: str,
        destination: str,
        queues: Sequence[str],
        want: int,
        lease_s: float,
        max_in_flight: int | None,
        rate_per_s: float | None,
        probe: bool = False,
    ) -> list[Job]:
        """Claim for one destination under its cap and rate limit, serialised across workers by
        the destination_state row lock (one short transaction)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("lock_destination"), {"destination": destination})
            state = await cur.fetchone()
            if state is None:
                return []
            allowed = want
            if max_in_flight is not None:
                await cur.execute(q("count_running_destination"), {"destination": destination})
                counted = await cur.fetchone()
                allowed = min(allowed, max_in_flight - int(counted["running"] if counted else 0))
            tokens: float | None = None
            if rate_per_s is not None:
                burst = max(1.0, rate_per_s)
                age = float(state["tokens_age_s"]) if state["tokens_age_s"] is not None else 1e9
                previous = state["tokens"] if state["tokens"] is not None else burst
                tokens = min(burst, previous + age * rate_per_s)
                allowed = min(allowed, int(tokens))
            if allowed <= 0:
                if tokens is not None:
                    await cur.execute(
                        q("save_destination_tokens"), {"destination": destination, "tokens": tokens}
                    )
                return []
            await cur.execute(
                q("claim_destination"),
                {
                    "worker": worker,
                    "destination": destination,
                    "queues": list(queues),
                    "limit": allowed,
                    "lease_s": lease_s,
                    "probe": probe,
                },
            )
            rows = await cur.fetchall()
            if tokens is not None:
                await cur.execute(
                    q("save_destination_tokens"),
                    {"destination": destination, "tokens": tokens - len(rows)},
                )
            return [_job(r) for r in rows]

    async def ensure_destination_states(self, destinations: Sequence[str]) -> None:
        await self._execute("ensure_destination_states", {"destinations": list(destinations)})

    async def destination_states(self) -> list[dict[str, Any]]:
        return await self._fetchall("destination_states", {})

    async def take_probe(self, *, destination: str, lease_s: float) -> bool:
        row = await self._fetchone("take_probe", {"destination": destination, "lease_s": lease_s})
        return row is not None

    async def record_breakers(
        self,
        *,
        tallies: dict[str, tuple[int, int, str | None]],
        threshold: int,
        pause_s: float,
    ) -> list[dict[str, Any]]:
        """tallies: destination → (successes, transient failures, last error). Returns the
        destinations whose circuit changed state."""
        names = sorted(tallies)
        return await self._fetchall(
            "record_breakers",
            {
                "destinations": names,
                "oks": [tallies[n][0] for n in names],
                "fails": [tallies[n][1] for n in names],
                "errors": [tallies[n][2] for n in names],
                "threshold": threshold,
                "pause_s": pause_s,
            },
        )

    async def defer_paused(self, *, destinations: Sequence[str], limit: int = 10_000) -> int:
        return await self._execute(
            "defer_paused", {"destinations": list(destinations), "limit": limit}
        )

    async def promote_due(self, *, limit: int = 5000) -> list[str]:
        """Make waiting rows due; returns the queues that got new work."""
        rows = await self._fetchall("promote_due", {"limit": limit})
        return sorted({r["queue"] for r in rows})

    async def record_outcomes(self, *, worker: str, outcomes: Sequence[Outcome]) -> set[int]:
        """Write a batch of outcomes; returns the ids whose lease still held (the rest lost it)."""
        kept, _ = await self.finish_outcomes(worker=worker, outcomes=outcomes)
        return kept

    async def finish_outcomes(
        self, *, worker: str, outcomes: Sequence[Outcome]
    ) -> tuple[set[int], bool]:
        """record_outcomes, plus whether a finished delivery has a successor of its ordering
        key waiting to be promoted."""
        rows = [
            [
                o.job.id,
                o.job.attempt,
                o.status,
                o.delay_s,
                _text(_clip(o.result.error, 500)),
                o.result.http_status,
                _text(_clip(o.result.response)),
                o.result.duration_ms,
                _text(_clip(o.result.request_summary, 500)),
                o.job.destination,
                _text(o.result.external_id),
            ]
            for o in outcomes
        ]
        params = {"worker": worker, "rows": json.dumps(rows, ensure_ascii=False)}
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(q("record_outcomes"), params)
            result = await cur.fetchall()
        return {r[0] for r in result}, any(r[1] for r in result)

    async def rescue_expired(
        self, *, worker: str, default_max_attempts: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return await self._fetchall(
            "rescue_expired_leases",
            {"worker": worker, "default_max_attempts": default_max_attempts, "limit": limit},
        )

    async def extend_leases(self, *, worker: str, ids: Sequence[int], lease_s: float) -> int:
        return await self._execute(
            "extend_leases", {"worker": worker, "ids": list(ids), "lease_s": lease_s}
        )

    async def release_leases(self, *, worker: str) -> int:
        row = await self._fetchone("release_leases", {"worker": worker})
        return int(row["released"]) if row else 0

    async def register_worker(
        self, *, id: str, host: str, pid: int, queues: Sequence[str], concurrency: int
    ) -> None:
        await self._execute(
            "register_worker",
            {
                "id": id,
                "host": host,
                "pid": pid,
                "queues": list(queues),
                "concurrency": concurrency,
            },
        )

    async def heartbeat_worker(
        self, *, id: str, in_flight: int, processed: int, stopping: bool
    ) -> None:
        await self._execute(
            "heartbeat_worker",
            {"id": id, "in_flight": in_flight, "processed": processed, "stopping": stopping},
        )

    async def deregister_worker(self, *, id: str) -> None:
        await self._execute("deregister_worker", {"id": id})

    async def prune_dead_workers(self, *, older_than_s: float) -> int:
        return await self._execute("prune_dead_workers", {"older_than_s": older_than_s})

    async def list_workers(self, *, alive_within_s: float) -> list[dict[str, Any]]:
        return await self._fetchall("list_workers", {"alive_within_s": alive_within_s})

    async def mapping_spec(
        self, *, event_type: str, destination: str, version: int
    ) -> dict[str, Any] | None:
        row = await self._fetchone(
            "get_mapping_spec",
            {"event_type": event_type, "destination": destination, "version": version},
        )
        return row["spec"] if row else None

    async def retention_delete(self, what: str, *, older_than_s: float, batch: int) -> int:
        name = {
            "delivered": "retention_delivered",
            "archived": "retention_archived",
            "events": "retention_events",
        }[what]
        return await self._execute(name, {"older_than_s": older_than_s, "batch": batch})

    # --- dead-letter transitions ---------------------------------------------------------

    async def reprocess_dead(
        self,
        *,
        ids: Sequence[int] | None = None,
        event_type: str | None = None,
        destination: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        error: str | None = None,
        remap: bool = False,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """dead → pending for one id, a list, or a filter; wakes the workers."""
        rows = await self._fetchall(
            "dlq_reprocess",
            {
                "ids": list(ids) if ids is not None else None,
                "event_type": event_type,
                "destination": destination,
                "since": since,
                "until": until,
                "error": error,
                "remap": remap,
                "limit": limit,
            },
        )
        if rows:
            await self._fetchall("notify_queues", {"queues": sorted({r["queue"] for r in rows})})
        return rows

    async def archive_dead(self, *, ids: Sequence[int]) -> list[int]:
        rows = await self._fetchall("dlq_archive", {"ids": list(ids)})
        return [r["id"] for r in rows]

    # --- keys ----------------------------------------------------------------------------

    async def auth_key(self, *, key_hash: str) -> dict[str, Any] | None:
        return await self._fetchone("auth_key", {"key_hash": key_hash})

    async def create_key(self, **params: Any) -> int:
        row = await self._fetchone("create_key", params)
        assert row is not None
        return int(row["id"])

    async def list_keys(self) -> list[dict[str, Any]]:
        return await self._fetchall("list_keys", {})

    async def revoke_key(self, *, name: str) -> bool:
        return await self._fetchone("revoke_key", {"name": name}) is not None

    # --- operators -----------------------------------------------------------------------

    async def ping(self) -> None:
        await self._fetchone("ping", {})

    async def event_detail(self, event_id: UUID) -> dict[str, Any] | None:
        event = await self._fetchone("get_event", {"id": event_id})
        if event is None:
            return None
        event["deliveries"] = await self._fetchall("get_event_deliveries", {"event_id": event_id})
        event["attempts"] = await self._fetchall("get_event_attempts", {"event_id": event_id})
        return event

    # --- mappings and routes (issue 4) ---------------------------------------------------

    async def mapping_pairs(self, *, event_type: str | None = None) -> list[dict[str, Any]]:
        return await self._fetchall("mapping_pairs", {"event_type": event_type})

    async def mapping_pair_known(self, *, event_type: str, destination: str) -> bool:
        row = await self._fetchone(
            "mapping_pair_known", {"event_type": event_type, "destination": destination}
        )
        return bool(row and row["known"])

    async def mapping_versions(self, *, event_type: str, destination: str) -> list[dict[str, Any]]:
        return await self._fetchall(
            "mapping_versions", {"event_type": event_type, "destination": destination}
        )

    async def mapping_version(
        self, *, event_type: str, destination: str, version: int
    ) -> dict[str, Any] | None:
        return await self._fetchone(
            "mapping_version",
            {"event_type": event_type, "destination": destination, "version": version},
        )

    async def mapping_activation_log(
        self, *, event_type: str, destination: str, limit: int = 20
    ) -> list[dict[str, Any]]:
        return await self._fetchall(
            "mapping_activation_log",
            {"event_type": event_type, "destination": destination, "limit": limit},
        )

    async def save_mapping(
        self,
        *,
        event_type: str,
        destination: str,
        spec: dict[str, Any],
        activate: bool,
        actor: str,
        note: str | None,
    ) -> dict[str, Any]:
        """Insert version max+1 (the caller validated ``spec``); optionally make it active."""
        params = {
            "event_type": event_type,
            "destination": destination,
            "spec": Jsonb(spec),
            "activate": activate,
            "actor": actor,
            "note": note,
        }
        row = await self._retry_pair_race("mapping_save", params)
        assert row is not None  # the insert always returns its row
        return row

    async def activate_mapping(
        self, *, event_type: str, destination: str, version: int | None, actor: str
    ) -> dict[str, Any] | None:
        """Make ``version`` the active one (None: roll back to the highest version below the
        active one). None when there is no such version."""
        return await self._retry_pair_race(
            "mapping_activate",
            {
                "event_type": event_type,
                "destination": destination,
                "version": version,
                "action": "activate" if version is not None else "rollback",
                "actor": actor,
            },
        )

    async def _retry_pair_race(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        # Two operators changing one pair at the same moment: the loser hits the primary key
        # (same max+1) or the one-active constraint; run it again on a fresh snapshot.
        for attempt in range(PAIR_RACE_ATTEMPTS):
            try:
                return await self._fetchone(name, params)
            except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation):
                if attempt == PAIR_RACE_ATTEMPTS - 1:
                    raise
        return None  # pragma: no cover - the loop always returns or raises

    async def mapping_preview_event(
        self, *, event_id: UUID, destination: str
    ) -> dict[str, Any] | None:
        return await self._fetchone(
            "mapping_preview_event", {"event_id": event_id, "destination": destination}
        )

    async def known_destinations(self) -> list[str]:
        return [r["destination"] for r in await self._fetchall("known_destinations", {})]

    async def route(self, *, event_type: str, destination: str) -> dict[str, Any] | None:
        return await self._fetchone(
            "route_get", {"event_type": event_type, "destination": destination}
        )

    async def set_route(
        self,
        *,
        event_type: str,
        destination: str,
        actor: str,
        queue: str | None = None,
        priority: int | None = None,
        delay_s: int | None = None,
        enabled: bool | None = None,
    ) -> dict[str, Any]:
        """Upsert a route (None keeps a field); the history trigger records ``actor``."""
        row = await self._fetchone(
            "route_set",
            {
                "event_type": event_type,
                "destination": destination,
                "actor": actor,
                "queue": queue,
                "priority": priority,
                "delay_s": delay_s,
                "enabled": enabled,
            },
        )
        assert row is not None  # an upsert always returns its row
        return row

    async def route_history(
        self, *, event_type: str | None = None, destination: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return await self._fetchall(
            "route_history",
            {"event_type": event_type, "destination": destination, "limit": limit},
        )

    # --- operating it: health, status, DLQ, metrics, alerts, dashboard (issue 6) ---------

    async def applied_migrations(self) -> dict[int, str]:
        rows = await self._fetchall("ops_applied_migrations", {})
        return {r["version"]: r["checksum"] for r in rows}

    async def ops_destinations(self, *, destinations: Sequence[str]) -> list[dict[str, Any]]:
        return await self._fetchall("ops_destinations", {"destinations": list(destinations)})

    async def ops_open_counts(self) -> list[dict[str, Any]]:
        return await self._fetchall("ops_open_counts", {})

    async def ops_dead_range(self) -> dict[str, Any]:
        row = await self._fetchone("ops_dead_range", {})
        assert row is not None
        return row

    async def status_rollup(self, *, settle_s: float) -> int:
        """Roll the closed minutes of the last hour not rolled up yet; how many were."""
        return await self._execute("status_rollup", {"settle_s": settle_s})

    async def status_prune(self, *, older_than_s: float) -> int:
        return await self._execute("status_prune", {"older_than_s": older_than_s})

    async def ops_delivered_by_destination(self, *, settle_s: float) -> dict[str, int]:
        rows = await self._fetchall("ops_delivered_by_destination", {"settle_s": settle_s})
        return {r["destination"]: r["count"] for r in rows if r["count"]}

    async def ops_throughput(self, *, settle_s: float) -> dict[str, int]:
        """received_1m … failed_60m: the 1, 5, 15 and 60 minute windows ending now."""
        rows = await self._fetchall("ops_throughput", {"settle_s": settle_s})
        return {
            f"{what}_{r['minutes']}m": r[what]
            for r in rows
            for what in ("received", "delivered", "failed")
        }

    async def ops_lag(self, *, window_s: float, sample: int) -> dict[str, Any]:
        row = await self._fetchone("ops_lag", {"window_s": window_s, "sample": sample})
        assert row is not None
        return row

    async def ops_state_gauges(self) -> list[dict[str, Any]]:
        return await self._fetchall("ops_state_gauges", {})

    async def ops_series(self) -> list[dict[str, Any]]:
        return await self._fetchall("ops_series", {})

    async def ops_retry_list(self, *, limit: int) -> list[dict[str, Any]]:
        return await self._fetchall("ops_retry_list", {"limit": limit})

    async def dlq_list(
        self,
        *,
        event_type: str | None,
        destination: str | None,
        since: datetime | None,
        until: datetime | None,
        error: str | None,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        return await self._fetchall(
            "dlq_list",
            {
                "event_type": event_type,
                "destination": destination,
                "since": since,
                "until": until,
                "error": error,
                "after_dead_at": after[0] if after else None,
                "after_id": after[1] if after else None,
                "limit": limit,
            },
        )

    async def dlq_get(self, *, id: int) -> dict[str, Any] | None:
        row = await self._fetchone("dlq_get", {"id": id})
        if row is not None:
            row["attempts_log"] = await self._fetchall("dlq_attempts", {"id": id})
        return row

    async def dlq_stats(self) -> list[dict[str, Any]]:
        return await self._fetchall("dlq_stats", {})

    async def dlq_top_errors(
        self, *, since: datetime, until: datetime, limit: int
    ) -> list[dict[str, Any]]:
        return await self._fetchall(
            "dlq_top_errors", {"since": since, "until": until, "limit": limit}
        )

    async def alert_dead_count(self, *, since: datetime, until: datetime) -> int:
        row = await self._fetchone("alert_dead_count", {"since": since, "until": until})
        return int(row["count"]) if row else 0

    async def alert_oldest_pending(self, *, destinations: Sequence[str]) -> datetime | None:
        row = await self._fetchone("alert_oldest_pending", {"destinations": list(destinations)})
        return row["oldest_due"] if row else None

    async def alert_live_queues(self, *, alive_within_s: float) -> set[str]:
        rows = await self._fetchall("alert_live_queues", {"alive_within_s": alive_within_s})
        return {r["queue"] for r in rows}

    async def alert_states(self) -> dict[str, dict[str, Any]]:
        return {r["key"]: r for r in await self._fetchall("alert_states", {})}

    async def alert_state_save(
        self,
        *,
        key: str,
        firing: bool,
        since: datetime | None,
        last_sent_at: datetime | None,
        details: dict[str, Any],
    ) -> None:
        await self._execute(
            "alert_state_save",
            {
                "key": key,
                "firing": firing,
                "since": since,
                "last_sent_at": last_sent_at,
                "details": Jsonb(details),
            },
        )

    async def alert_enqueue(
        self, *, payload: dict[str, Any], idempotency_key: str, destinations: Sequence[str]
    ) -> tuple[UUID | None, list[str]]:
        """Write an alert.raised event for the given sinks; (None, []) when already written."""
        row = await self._fetchone(
            "alert_enqueue",
            {
                "payload": Jsonb(payload),
                "idempotency_key": idempotency_key,
                "destinations": list(destinations),
            },
        )
        if row is None or row["event_id"] is None:
            return None, []
        return row["event_id"], list(row["destinations"])

    async def lookup_events(
        self, *, phone: str | None = None, email: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        if phone is not None:
            return await self._fetchall("lookup_events_by_phone", {"phone": phone, "limit": limit})
        if email is not None:
            return await self._fetchall("lookup_events_by_email", {"email": email, "limit": limit})
        return []

    async def ops_circuits(self) -> dict[str, str]:
        rows = await self._fetchall("ops_circuits", {})
        return {r["destination"]: r["state"] for r in rows}

    # --- ingress: leads, WhatsApp channel statuses, rate limits (issue 3) ------------------

    async def ingest_with_leads(
        self,
        *,
        match: LeadMatch,
        dedupe: tuple[str, str],
        plan: Callable[[list[dict[str, Any]]], LeadPlan],
        request_id: str | None,
        client: str | None,
    ) -> LeadIngest:
        """Lock the contact, match its lead, write what `plan` decides: one transaction.

        `dedupe` is (source, idempotency key) of the request's main event: when it exists the
        first write is returned and nothing is written. An exception from `plan` (a rejected
        request) rolls everything back.
        """
        source, key = dedupe
        try:
            async with (
                self.pool.connection() as conn,
                conn.transaction(),
                conn.cursor(row_factory=dict_row) as cur,
            ):
                await cur.execute(q("lock_lead_keys"), {"keys": lock_keys(match, dedupe)})
                await cur.execute(
                    q("lead_event_by_idempotency"), {"source": source, "idempotency_key": key}
                )
                first = await cur.fetchone()
                if first is not None:
                    return _lead_duplicate(first)
                await cur.execute(
                    q("match_leads"),
                    {"phone": match.phone, "email": match.email, "raw_ids": list(match.raw_ids)},
                )
                decided = plan(await cur.fetchall())
                if decided.insert is not None:
                    await cur.execute(q("insert_lead"), _lead_params(decided.insert))
                if decided.update is not None:
                    row_id, values = decided.update
                    await cur.execute(q("update_lead"), {**_lead_params(values), "id": row_id})
                written: list[WrittenEvent] = []
                for ev in decided.events:
                    await cur.execute(
                        q("ingest_event"),
                        {
                            "type": ev.type,
                            "source": ev.source,
                            "payload": Jsonb(ev.payload),
                            "idempotency_key": ev.idempotency_key,
                            "occurred_at": ev.occurred_at,
                            "request_id": request_id,
                            "client": client,
                            "ordering_key": ev.ordering_key,
                            "extra_delay_s": None,
                            # Inside a transaction: NOTIFY is sent at its commit, never early.
                            "notify": True,
                        },
                    )
                    row = await cur.fetchone()
                    if row is None or row["event_id"] is None:
                        raise _LeadRace
                    written.append(
                        WrittenEvent(
                            row["event_id"], ev.type, list(row["destinations"]), ev.source
                        )
                    )
                return LeadIngest(
                    events=written,
                    duplicate=False,
                    lead_id=str(decided.lead_id) if decided.lead_id else None,
                    created=decided.insert is not None,
                )
        except _LeadRace:
            # Only a writer outside the advisory locks (an event posted through POST /events
            # with the same key) can get here; its event is the first one.
            first = await self._fetchone(
                "lead_event_by_idempotency", {"source": source, "idempotency_key": key}
            )
            if first is None:  # pragma: no cover - a conflicting row does not vanish
                raise RuntimeError("idempotency conflict but no first event found") from None
            return _lead_duplicate(first)

    async def channel_status(
        self, *, ids: Sequence[str], status: str, status_at: datetime, error: str | None
    ) -> tuple[int, int]:
        """Record a WhatsApp status for outbound message ids: (deliveries updated, parked)."""
        row = await self._fetchone(
            "channel_status_update",
            {"ids": list(ids), "status": status, "status_at": status_at, "error": error},
        )
        assert row is not None
        return int(row["updated"]), int(row["parked"])

    async def reconcile_channel_statuses(
        self, *, keep_s: float = 86400.0, batch: int = 5000
    ) -> tuple[int, int]:
        """Fold parked statuses into deliveries; (applied, removed from the inbox)."""
        row = await self._fetchone("reconcile_channel_statuses", {"keep_s": keep_s, "batch": batch})
        assert row is not None
        return int(row["applied"]), int(row["removed"])

    async def take_token(
        self, *, bucket: str, rate_per_s: float, burst: int, cost: int = 1, need: int = 1
    ) -> tuple[bool, float]:
        """Take `cost` tokens from a shared bucket holding at least `need`: (allowed, tokens
        left, below 0 after a batch larger than what was there)."""
        row = await self._fetchone(
            "take_token",
            {
                "bucket": bucket,
                "rate": float(rate_per_s),
                "burst": float(burst),
                "cost": float(cost),
                "need": float(need),
            },
        )
        assert row is not None
        return bool(row["allowed"]), float(row["level"])

    async def peek_token(self, *, bucket: str, rate_per_s: float, burst: int) -> float:
        """Tokens in a shared bucket now, taking none."""
        row = await self._fetchone(
            "peek_token", {"bucket": bucket, "rate": float(rate_per_s), "burst": float(burst)}
        )
        assert row is not None
        return float(row["level"])

    async def prune_rate_limits(self, *, batch: int = 10_000) -> int:
        return await self._execute("prune_rate_limits", {"batch": batch})

    # --- business flows: contacts, opt-outs, feedback, syncs, billing (issue 5) -----------

    async def contact_get(self, *, client_id: str) -> dict[str, Any] | None:
        return await self._fetchone("contact_get", {"client_id": client_id})

    async def contact_flags(
        self, *, phone: str | None, email: str | None, check_leads: bool
    ) -> dict[str, Any]:
        row = await self._fetchone(
            "contact_flags",
            {
                "addresses": [a for a in (phone, email) if a],
                "phone": phone,
                "email": email,
                "check_leads": check_leads,
            },
        )
        assert row is not None  # a bare SELECT always returns its row
        return row

    async def opt_out_record(
        self, *, address: str, channel: str, reason: str | None, message_id: str | None
    ) -> bool:
        """True when this is the address's first opt-out."""
        row = await self._fetchone(
            "opt_out_record",
            {"address": address, "channel": channel, "reason": reason, "message_id": message_id},
        )
        return row is not None

    async def feedback_request_record(
        self,
        *,
        service_id: str,
        client_id: str | None,
        caregiver_id: str | None,
        phone: str | None,
        email: str | None,
        channel: str,
    ) -> None:
        await self._execute(
            "feedback_request_record",
            {
                "service_id": service_id,
                "client_id": client_id,
                "caregiver_id": caregiver_id,
                "phone": phone,
                "email": email,
                "channel": channel,
            },
        )

    async def feedback_request_get(self, *, service_id: str) -> dict[str, Any] | None:
        return await self._fetchone("feedback_request_get", {"service_id": service_id})

    async def feedback_pending_by_phone(
        self, *, phone: str, within_s: float
    ) -> dict[str, Any] | None:
        return await self._fetchone(
            "feedback_pending_by_phone", {"phone": phone, "within_s": within_s}
        )

    async def answer_feedback(
        self,
        *,
        service_id: str,
        rating: int,
        comment: str | None,
        channel: str,
        source: str,
        idempotency_key: str,
        build: Callable[[dict[str, Any]], tuple[dict[str, Any], str | None]],
        request_id: str | None,
        client: str | None,
    ) -> tuple[UUID, list[str]] | None:
        """Mark the service's feedback answered and write `feedback.received`, one transaction.

        None when it was answered before (the link and the WhatsApp reply are single-use
        together). `build(request row)` returns the event payload and its ordering key.
        """
        async with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                q("feedback_answer"),
                {
                    "service_id": service_id,
                    "rating": rating,
                    "comment": comment,
                    "channel": channel,
                },
            )
            request = await cur.fetchone()
            if request is None:
                return None
            payload, ordering_key = build(request)
            await cur.execute(
                q("ingest_event"),
                {
                    "type": "feedback.received",
                    "source": source,
                    "payload": Jsonb(payload),
                    "idempotency_key": idempotency_key,
                    "occurred_at": None,
                    "request_id": request_id,
                    "client": client,
                    "ordering_key": ordering_key,
                    "extra_delay_s": None,
                    "notify": True,
                },
            )
            row = await cur.fetchone()
            if row is None or row["event_id"] is None:
                # The key was used already (an event posted by hand): keep that one, and
                # the answer recorded with it.
                return None
            await cur.execute(
                q("feedback_link_event"), {"event_id": row["event_id"], "service_id": service_id}
            )
            return row["event_id"], list(row["destinations"])

    async def sync_run_start(self, *, job: str, stale_s: float) -> tuple[int, str | None] | None:
        """(run id, cursor) of a new run; None while another run of `job` is in progress."""
        await self._execute("sync_abandon_stale", {"job": job, "stale_s": stale_s})
        try:
            row = await self._fetchone("sync_run_start", {"job": job})
        except psycopg.errors.UniqueViolation:
            return None
        assert row is not None
        return int(row["id"]), row["cursor_before"]

    async def sync_run_finish(
        self,
        *,
        id: int,
        status: str,
        pages: int,
        counts: dict[str, Any],
        error: str | None,
        cursor_after: str | None,
    ) -> None:
        await self._execute(
            "sync_run_finish",
            {
                "id": id,
                "status": status,
                "pages": pages,
                "counts": Jsonb(counts),
                "error": _clip(error, 1000),
                "cursor_after": cursor_after,
            },
        )

    async def sync_runs_recent(self, *, job: str | None, limit: int = 20) -> list[dict[str, Any]]:
        return await self._fetchall("sync_runs_recent", {"job": job, "limit": limit})

    async def synced_contract(self, *, contract_id: str) -> dict[str, Any] | None:
        return await self._fetchone("synced_contract_get", {"contract_id": contract_id})

    async def synced_contract_save(
        self, *, contract_id: str, action: str, fingerprint: str, source_updated_at: str | None
    ) -> None:
        await self._execute(
            "synced_contract_save",
            {
                "contract_id": contract_id,
                "action": action,
                "fingerprint": fingerprint,
                "source_updated_at": source_updated_at,
            },
        )

    async def billing_rates(self) -> list[dict[str, Any]]:
        return await self._fetchall("billing_rates", {})

    async def billing_holidays(self, *, first: date, last: date) -> set[date]:
        rows = await self._fetchall("billing_holidays", {"first": first, "last": last})
        return {r["day"] for r in rows}

    async def bill_service(
        self,
        *,
        service_id: str,
        client_id: str,
        caregiver_id: str | None,
        period: str,
        started_at: datetime,
        ended_at: datetime,
        lines: list[dict[str, Any]],
        amount_cents: int,
        payout_cents: int,
        run_id: int | None,
        external_key: str,
    ) -> bool:
        """True when the service was billed now, False when it had been billed before."""
        row = await self._fetchone(
            "bill_service",
            {
                "service_id": service_id,
                "client_id": client_id,
                "caregiver_id": caregiver_id,
                "period": period,
                "started_at": started_at,
                "ended_at": ended_at,
                "lines": Jsonb(lines),
                "amount_cents": amount_cents,
                "payout_cents": payout_cents,
                "run_id": run_id,
                "external_key": external_key,
            },
        )
        return row is not None

    async def invoices_dirty(self, *, limit: int) -> list[dict[str, Any]]:
        return await self._fetchall("invoices_dirty", {"limit": limit})

    async def invoice_services(self, *, client_id: str, period: str) -> list[dict[str, Any]]:
        return await self._fetchall("invoice_services", {"client_id": client_id, "period": period})

    async def invoice_pushed(
        self, *, client_id: str, period: str, version: int, total_cents: int
    ) -> None:
        await self._execute(
            "invoice_pushed",
            {
                "client_id": client_id,
                "period": period,
                "version": version,
                "total_cents": total_cents,
            },
        )

    async def invoice_push_failed(self, *, client_id: str, period: str, error: str) -> None:
        await self._execute(
            "invoice_push_failed",
            {"client_id": client_id, "period": period, "error": _clip(error, 500)},
        )

    # --- throughput and scale: the autoscaling supervisor (issue 7) -----------------------

    async def autoscale_load(
        self, *, queues: Sequence[str], destinations: Sequence[str], cap: int = 100_000
    ) -> list[dict[str, Any]]:
        """Per queue: due pending deliveries (up to `cap`) and the oldest one's age in s."""
        return await self._fetchall(
            "autoscale_load",
            {"queues": list(queues), "destinations": list(destinations), "cap": cap},
        )


class _LeadRace(Exception):
    """The main event's idempotency key was taken between the check and the insert."""


def _lead_duplicate(first: dict[str, Any]) -> LeadIngest:
    return LeadIngest(
        events=[WrittenEvent(first["event_id"], first["type"], list(first["destinations"]))],
        duplicate=True,
        lead_id=first["lead_id"],
    )


def _lead_params(row: LeadRow) -> dict[str, Any]:
    return {
        "lead_id": row.lead_id,
        "name": row.name,
        "phone": row.phone,
        "phone_raw": row.phone_raw,
        "whatsapp_lid": row.whatsapp_lid,
        "email": row.email,
        "consent": row.consent,
        "source": row.source,
        "first_touch": Jsonb(row.first_touch),
        "last_touch": Jsonb(row.last_touch),
        "touches": row.touches,
    }
