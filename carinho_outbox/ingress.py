"""Accepting an event: catalog and scope checks, payload validation, one write.

Shared by `POST /events` and the webhooks; it never calls a destination.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from . import metrics
from .coalesce import Coalescer
from .leads import LeadIngest, LeadMatch, LeadPlan
from .payloads import MAX_REPORTED_ERRORS, PayloadError, validate_payload
from .records import BatchItem
from .store import Store

CATALOG_TTL_S = 30.0


class IngressError(Exception):
    """A refusal with an HTTP-shaped status; nothing was written."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: UUID
    destinations: list[str]
    duplicate: bool


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One item of POST /events/batch as the client sent it (the envelope already checked)."""

    type: str
    payload: Any
    source: str | None = None
    idempotency_key: str | None = None
    occurred_at: datetime | None = None


class Catalog:
    """Event types, their allowed sources and ordering-key paths, read from the database and
    cached briefly."""

    def __init__(self, store: Store, ttl_s: float = CATALOG_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._types: dict[str, tuple[list[str], list[str]]] = {}
        self._loaded_at = float("-inf")

    async def entries(self) -> dict[str, tuple[list[str], list[str]]]:
        if time.monotonic() - self._loaded_at > self.ttl_s:
            self._types = await self.store.event_catalog()
            self._loaded_at = time.monotonic()
        return self._types

    async def types(self) -> dict[str, list[str]]:
        return {t: sources for t, (sources, _) in (await self.entries()).items()}


def ordering_key(paths: list[str], payload: dict[str, Any]) -> str | None:
    """`<field>:<value>` of the first path present: deliveries sharing it go out in order."""
    for path in paths:
        value: Any = payload
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value not in (None, ""):
            return f"{path}:{value}"
    return None


def resolve_source(
    event_type: str, allowed: list[str], key_sources: tuple[str, ...], asked: str | None
) -> str:
    """Which source the event is recorded under, given the key's scopes (DESIGN.md §3)."""
    usable = [s for s in key_sources if s in allowed]
    if asked is not None:
        if asked not in key_sources:
            raise IngressError(403, "forbidden", f"this key may not emit as source {asked!r}")
        if asked not in allowed:
            raise IngressError(
                422,
                "validation_error",
                f"source {asked!r} may not emit {event_type!r}",
                [{"path": "source", "message": f"allowed sources: {', '.join(allowed)}"}],
            )
        return asked
    if not usable:
        raise IngressError(
            403,
            "forbidden",
            f"this key's sources ({', '.join(key_sources) or 'none'}) may not emit {event_type!r}",
        )
    if len(usable) > 1:
        raise IngressError(
            422,
            "validation_error",
            "this key has several sources allowed for this type; name one in 'source'",
            [{"path": "source", "message": f"one of: {', '.join(usable)}"}],
        )
    return usable[0]


def check_event(
    entries: dict[str, tuple[list[str], list[str]]],
    event_type: str,
    payload: Any,
    key_sources: tuple[str, ...],
    source: str | None,
    jsonb_safe: bool = False,
) -> tuple[str, dict[str, Any], str | None]:
    """Catalog, scope and payload checks of one event: (source, clean payload, ordering key)."""
    entry = entries.get(event_type)
    if entry is None:
        raise IngressError(
            422,
            "validation_error",
            f"unknown event type {event_type!r}",
            [{"path": "type", "message": f"known types: {', '.join(sorted(entries))}"}],
        )
    allowed, ordering_paths = entry
    chosen = resolve_source(event_type, allowed, key_sources, source)
    try:
        clean = validate_payload(event_type, payload, jsonb_safe=jsonb_safe)
    except PayloadError as exc:
        raise IngressError(
            422, "validation_error", "payload does not match the event type", exc.details
        ) from None
    return chosen, clean, ordering_key(ordering_paths, clean)


def _at(index: int, path: str) -> str:
    return f"events[{index}]" + (f".{path}" if path else "")


def _item_index(path: str) -> int:
    return int(path[len("events[") : path.index("]")]) if path.startswith("events[") else -1


def _indexed(index: int, exc: IngressError) -> list[dict[str, Any]]:
    """An item's refusal as `details` entries whose paths start with `events[i]`."""
    if isinstance(exc.details, list) and exc.details:
        return [{**d, "path": _at(index, str(d.get("path", "")))} for d in exc.details]
    # A scope refusal has no field path of its own: it is about the item's source.
    return [{"path": _at(index, "source"), "message": exc.message, "type": exc.code}]


class Ingress:
    def __init__(
        self,
        store: Store,
        catalog: Catalog | None = None,
        *,
        group_max: int = 1,
        group_inflight: int = 2,
    ) -> None:
        """group_max > 1: concurrent `accept` calls are written together, up to that many
        events per statement (coalesce.py); 1 writes each event by itself."""
        self.store = store
        self.catalog = catalog or Catalog(store)
        self.group: Coalescer[BatchItem, tuple[UUID, list[str], bool]] | None = None
        if group_max > 1:
            self.group = Coalescer(
                self._write_group,
                self._write_one,
                max_items=group_max,
                max_inflight=group_inflight,
            )

    async def _write_group(self, items: list[BatchItem]) -> list[tuple[UUID, list[str], bool]]:
        written, _queues = await self.store.ingest_batch(items, request_id=None, client=None)
        metrics.observe_ingest_group(len(items))
        return written

    async def _write_one(
        self, item: BatchItem, extra_delay_s: float | None = None
    ) -> tuple[UUID, list[str], bool]:
        written = await self.store.ingest_event(
            type=item.type,
            source=item.source,
            payload=item.payload,
            idempotency_key=item.idempotency_key,
            occurred_at=item.occurred_at,
            request_id=item.request_id,
            client=item.client,
            ordering_key=item.ordering_key,
            extra_delay_s=extra_delay_s,
        )
        metrics.observe_ingest_group(1)
        return written

    async def close(self) -> None:
        if self.group is not None:
            await self.group.close()

    async def accept_batch(
        self,
        events: Sequence[BatchEvent | None],
        *,
        key_sources: tuple[str, ...],
        client: str | None,
        request_id: str | None = None,
        invalid: Sequence[dict[str, Any]] = (),
        notify: bool | None = None,
        jsonb_safe: bool = False,
    ) -> list[Accepted]:
        """All or nothing: every event is checked as `accept` checks one, and the batch is
        written in one statement only when none is refused. `None` marks an item whose
        envelope the caller already refused, its errors in `invalid` (paths `events[i]…`).
        A refusal names every bad item (up to MAX_REPORTED_ERRORS paths): 403 when any item's
        source is out of the key's scope, else 422. `jsonb_safe`: see validate_payload.
        `notify`: see Store.ingest_batch (None: NOTIFY on the edges of a burst).
        """
        entries = await self.catalog.entries()
        problems: list[tuple[int, list[dict[str, Any]]]] = []
        forbidden: list[dict[str, Any]] = []
        bad = sum(1 for e in events if e is None)
        items: list[BatchItem] = []
        for index, ev in enumerate(events):
            if ev is None:
                continue
            try:
                chosen, clean, key = check_event(
                    entries, ev.type, ev.payload, key_sources, ev.source, jsonb_safe
                )
            except IngressError as exc:
                if exc.status == 403:
                    forbidden.extend(_indexed(index, exc))
                else:
                    bad += 1
                    problems.append((index, _indexed(index, exc)))
                continue
            items.append(BatchItem(ev.type, chosen, clean, ev.idempotency_key, ev.occurred_at, key))
        if forbidden:
            raise IngressError(
                403,
                "forbidden",
                f"this key may not emit {len(forbidden)} of the {len(events)} events; "
                "nothing was written",
                forbidden[:MAX_REPORTED_ERRORS],
            )
        if bad:
            # In item order, the caller's envelope errors merged in.
            merged = [*((_item_index(d["path"]), [d]) for d in invalid), *problems]
            merged.sort(key=lambda pair: pair[0])
            details = [d for _, found in merged for d in found]
            raise IngressError(
                422,
                "validation_error",
                f"{bad} of the {len(events)} events are invalid; nothing was written",
                details[:MAX_REPORTED_ERRORS],
            )
        written, _queues = await self.store.ingest_batch(
            items, request_id=request_id, client=client, notify=notify
        )
        return [Accepted(event_id, dests, dup) for event_id, dests, dup in written]

    async def accept(
        self,
        *,
        event_type: str,
        payload: Any,
        key_sources: tuple[str, ...],
        source: str | None,
        client: str | None,
        idempotency_key: str | None = None,
        occurred_at: datetime | None = None,
        request_id: str | None = None,
        extra_delay_s: float | None = None,
    ) -> Accepted:
        chosen, clean, key = check_event(
            await self.catalog.entries(), event_type, payload, key_sources, source
        )
        item = BatchItem(
            event_type, chosen, clean, idempotency_key, occurred_at, key, request_id, client
        )
        if self.group is not None and extra_delay_s is None:
            return Accepted(*await self.group.submit(item))
        return Accepted(*await self._write_one(item, extra_delay_s))

    async def accept_with_leads(
        self,
        *,
        emits: Sequence[tuple[str, str]],
        match: LeadMatch,
        dedupe: tuple[str, str],
        plan: Callable[[list[dict[str, Any]]], LeadPlan],
        client: str | None,
        request_id: str | None = None,
    ) -> LeadIngest:
        """The webhooks' acceptance: events that depend on the `leads` table (lead.created vs
        lead.updated, a WhatsApp sender's first message) are planned inside the store's
        transaction, after the contact is locked and its lead read, and written with the lead
        row in that same transaction. `emits` lists every (type, source) the plan may write;
        they are checked against the catalog before anything is locked.
        """
        entries = await self.catalog.entries()
        for event_type, source in emits:
            entry = entries.get(event_type)
            if entry is None:  # the migrations put it there: a broken deployment
                raise RuntimeError(f"{event_type!r} is missing from the event catalog")
            resolve_source(event_type, entry[0], (source,), source)

        def planned(rows: list[dict[str, Any]]) -> LeadPlan:
            decided = plan(rows)
            for ev in decided.events:
                if (ev.type, ev.source) not in emits:  # a planner bug, not bad input
                    raise RuntimeError(f"plan wrote undeclared {ev.type} from {ev.source}")
            return replace(
                decided,
                events=tuple(
                    replace(ev, ordering_key=ordering_key(entries[ev.type][1], ev.payload))
                    for ev in decided.events
                ),
            )

        try:
            return await self.store.ingest_with_leads(
                match=match, dedupe=dedupe, plan=planned, request_id=request_id, client=client
            )
        except PayloadError as exc:
            raise IngressError(
                422, "validation_error", "payload does not match the event type", exc.details
            ) from None
