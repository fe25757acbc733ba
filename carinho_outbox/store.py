"""The one seam that runs SQL. Every statement comes from queries.sql by name."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from .queries import q
from .records import Job, Outcome

log = logging.getLogger(__name__)

# Attempt rows keep a bounded slice of what the destination answered.
RESPONSE_KEEP_CHARS = 2000


def _clip(text: str | None, limit: int = RESPONSE_KEEP_CHARS) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit] + "…"


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # Short statements only on this path; a runaway query must not hold a pooled connection.
    await conn.execute("set statement_timeout = '30s'")
    await conn.execute("set lock_timeout = '5s'")


def make_pool(dsn: str, *, max_size: int, timeout_s: float, name: str) -> AsyncConnectionPool:
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
        check=AsyncConnectionPool.check_connection,
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


class Store:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

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
        row = await self._fetchone(
            "ingest_event",
            {
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
            return row["event_id"], list(row["destinations"]), False
        first = await self._fetchone(
            "find_event_by_idempotency", {"source": source, "idempotency_key": idempotency_key}
        )
        if first is None:  # pragma: no cover - the conflict row cannot vanish (no deletes race)
            raise RuntimeError("idempotency conflict but no first event found")
        return first["event_id"], list(first["destinations"]), True

    async def event_types(self) -> dict[str, list[str]]:
        rows = await self._fetchall("list_event_types", {})
        return {r["type"]: list(r["sources"]) for r in rows}

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
    ) -> list[Job]:
        rows = await self._fetchall(
            "claim_deliveries",
            {
                "worker": worker,
                "destinations": list(destinations),
                "queues": list(queues),
                "limit": limit,
                "lease_s": lease_s,
            },
        )
        return [
            Job(
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
            )
            for r in rows
        ]

    async def record_outcomes(self, *, worker: str, outcomes: Sequence[Outcome]) -> set[int]:
        """Write a batch of outcomes; returns the ids whose lease still held (the rest lost it)."""
        params: dict[str, Any] = {
            "worker": worker,
            "ids": [o.job.id for o in outcomes],
            "attempts": [o.job.attempt for o in outcomes],
            "statuses": [o.status for o in outcomes],
            "delays_s": [o.delay_s for o in outcomes],
            "errors": [_clip(o.result.error, 500) for o in outcomes],
            "http_statuses": [o.result.http_status for o in outcomes],
            "responses": [_clip(o.result.response) for o in outcomes],
            "durations_ms": [o.result.duration_ms for o in outcomes],
            "requests": [_clip(o.result.request_summary, 500) for o in outcomes],
            "destinations": [o.job.destination for o in outcomes],
            "external_ids": [o.result.external_id for o in outcomes],
        }
        rows = await self._fetchall("record_outcomes", params)
        return {r["id"] for r in rows}

    async def rescue_expired(
        self, *, worker: str, default_max_attempts: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return await self._fetchall(
            "rescue_expired_leases",
            {"worker": worker, "default_max_attempts": default_max_attempts, "limit": limit},
        )

    async def extend_leases(self, *, worker: str, lease_s: float) -> int:
        return await self._execute("extend_leases", {"worker": worker, "lease_s": lease_s})

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
