"""Operator actions on mappings and routes, shared by the CLI and the HTTP API.

Validation happens here, before anything is written: a spec goes through ``parse_spec`` and is
stored in its canonical form, a route change is range-checked. Errors are ``AdminError`` with a
kind the two surfaces translate (exit 2 / 404, 422).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from uuid import UUID

from .envelope import encode, envelope
from .mapping import MappingError, MappingSpecError, diff_specs, dump_spec, parse_spec
from .payloads import PayloadError, validate_payload
from .records import Job
from .rendering import Renderer
from .settings import HTTP_DESTINATIONS
from .store import Store

# Routes: a typo must not park every delivery of a type for years.
MAX_ROUTE_DELAY_S: Final = 30 * 24 * 3600
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 32767  # smallint
QUEUE_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,49}")
MAX_NOTE_CHARS: Final = 500
ACTIVATION_LOG_ROWS: Final = 20
# Payload previews have no stored event: a fixed id keeps their output reproducible.
PREVIEW_EVENT_ID: Final = UUID(int=0)

ErrorKind = Literal["not_found", "invalid"]
_PROBLEM_PATH = re.compile(r"^(fields|drop)\[(\d+)\]")


class AdminError(Exception):
    def __init__(self, kind: ErrorKind, message: str, details: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details


def spec_problem_details(exc: MappingSpecError) -> list[dict[str, str]]:
    """One entry per problem, each keeping the rule-naming message of mapping.py."""
    details = []
    for problem in exc.problems:
        match = _PROBLEM_PATH.match(problem)
        path = f"spec.{match[1]}.{match[2]}" if match else "spec"
        details.append({"path": path, "message": problem, "type": "mapping_spec"})
    return details


def validate_spec(raw: object) -> dict[str, Any]:
    """The canonical form of a valid spec, or AdminError('invalid') naming each bad rule."""
    try:
        return dump_spec(parse_spec(raw))
    except MappingSpecError as exc:
        raise AdminError(
            "invalid", f"invalid mapping spec: {exc.problems[0]}", spec_problem_details(exc)
        ) from None


@dataclass(frozen=True, slots=True)
class RouteChange:
    queue: str | None = None
    priority: int | None = None
    delay_s: int | None = None
    enabled: bool | None = None

    def problems(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []

        def bad(path: str, message: str) -> None:
            out.append({"path": path, "message": message, "type": "route"})

        if all(v is None for v in (self.queue, self.priority, self.delay_s, self.enabled)):
            bad("route", "nothing to change: give queue, priority, delay_s or enabled")
        if self.queue is not None and not QUEUE_PATTERN.fullmatch(self.queue):
            bad("queue", "queue names are 1-50 characters of a-z, 0-9, '_', '.', '-'")
        if self.priority is not None and (
            isinstance(self.priority, bool) or not MIN_PRIORITY <= self.priority <= MAX_PRIORITY
        ):
            bad("priority", f"priority must be {MIN_PRIORITY}..{MAX_PRIORITY} (lower runs first)")
        if self.delay_s is not None and (
            isinstance(self.delay_s, bool) or not 0 <= self.delay_s <= MAX_ROUTE_DELAY_S
        ):
            bad("delay_s", f"delay_s must be 0..{MAX_ROUTE_DELAY_S} seconds")
        return out


def _clean_note(note: str | None) -> str | None:
    if note is None:
        return None
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise AdminError(
            "invalid",
            f"note is longer than {MAX_NOTE_CHARS} characters",
            [{"path": "note", "message": "too long", "type": "string_too_long"}],
        )
    return note or None


class MappingsAdmin:
    def __init__(self, store: Store, *, queues: Sequence[str] = ()) -> None:
        self.store = store
        self.queues = list(queues)

    # --- mappings ------------------------------------------------------------------------

    async def _require_pair(self, event_type: str, destination: str) -> None:
        if not await self.store.mapping_pair_known(event_type=event_type, destination=destination):
            raise AdminError(
                "not_found",
                f"no route or mapping for {event_type} -> {destination}",
            )

    async def _require_version(
        self, event_type: str, destination: str, version: int
    ) -> dict[str, Any]:
        row = await self.store.mapping_version(
            event_type=event_type, destination=destination, version=version
        )
        if row is None:
            await self._require_pair(event_type, destination)
            raise AdminError(
                "not_found", f"{event_type} -> {destination} has no mapping version {version}"
            )
        return row

    async def list_pairs(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return await self.store.mapping_pairs(event_type=event_type)

    async def show(self, event_type: str, destination: str) -> dict[str, Any]:
        versions = await self.store.mapping_versions(event_type=event_type, destination=destination)
        if not versions:
            await self._require_pair(event_type, destination)
        active = next((v["version"] for v in versions if v["is_active"]), None)
        route = await self.store.route(event_type=event_type, destination=destination)
        log = await self.store.mapping_activation_log(
            event_type=event_type, destination=destination, limit=ACTIVATION_LOG_ROWS
        )
        return {
            "event_type": event_type,
            "destination": destination,
            "active_version": active,
            "route": route,
            "versions": versions,
            "activations": log,
        }

    async def version(self, event_type: str, destination: str, version: int) -> dict[str, Any]:
        return await self._require_version(event_type, destination, version)

    async def save(
        self,
        event_type: str,
        destination: str,
        raw_spec: object,
        *,
        activate: bool,
        actor: str,
        note: str | None = None,
    ) -> dict[str, Any]:
        spec = validate_spec(raw_spec)
        clean_note = _clean_note(note)
        await self._require_pair(event_type, destination)
        row = await self.store.save_mapping(
            event_type=event_type,
            destination=destination,
            spec=spec,
            activate=activate,
            actor=actor,
            note=clean_note,
        )
        return {"event_type": event_type, "destination": destination, **row, "spec": spec}

    async def activate(
        self, event_type: str, destination: str, version: int, *, actor: str
    ) -> dict[str, Any]:
        await self._require_version(event_type, destination, version)
        row = await self.store.activate_mapping(
            event_type=event_type, destination=destination, version=version, actor=actor
        )
        if row is None:  # pragma: no cover - versions are never deleted (0007 trigger)
            raise AdminError("not_found", f"{event_type} -> {destination} v{version} vanished")
        return {"event_type": event_type, "destination": destination, **row}

    async def rollback(self, event_type: str, destination: str, *, actor: str) -> dict[str, Any]:
        row = await self.store.activate_mapping(
            event_type=event_type, destination=destination, version=None, actor=actor
        )
        if row is None:
            await self._require_pair(event_type, destination)
            raise AdminError(
                "invalid",
                f"{event_type} -> {destination}: no version below the active one to roll back to",
            )
        return {"event_type": event_type, "destination": destination, **row}

    async def diff(
        self, event_type: str, destination: str, v_from: int | None, v_to: int | None
    ) -> dict[str, Any]:
        """Defaults: from the active version, to the latest one."""
        versions = await self.store.mapping_versions(event_type=event_type, destination=destination)
        if not versions:
            await self._require_pair(event_type, destination)
            raise AdminError("not_found", f"{event_type} -> {destination} has no mapping versions")
        by_version = {v["version"]: v for v in versions}
        if v_from is None:
            v_from = next(
                (v["version"] for v in versions if v["is_active"]), versions[0]["version"]
            )
        if v_to is None:
            v_to = versions[-1]["version"]
        for wanted in (v_from, v_to):
            if wanted not in by_version:
                raise AdminError(
                    "not_found", f"{event_type} -> {destination} has no mapping version {wanted}"
                )
        lines = diff_specs(
            parse_spec(by_version[v_from]["spec"]),
            parse_spec(by_version[v_to]["spec"]),
            old_label=f"{event_type} -> {destination} v{v_from}",
            new_label=f"{event_type} -> {destination} v{v_to}",
        )
        return {
            "event_type": event_type,
            "destination": destination,
            "from": v_from,
            "to": v_to,
            "identical": not lines,
            "diff": lines,
        }

    async def preview(
        self,
        event_type: str,
        destination: str,
        *,
        event_id: UUID | None = None,
        payload: object = None,
        version: int | None = None,
        source: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """What the destination gets for a stored event or a payload; nothing is sent.

        Version: the one asked for; else, for a stored event routed to this destination, the
        version its delivery is pinned to (what it got, or gets on its next retry); else the
        active one. The body is built by the worker's own code (Renderer + envelope), so it is
        byte for byte what the adapter would post.
        """
        await self._require_pair(event_type, destination)
        if (event_id is None) == (payload is None):
            raise AdminError(
                "invalid",
                "give exactly one of event_id or payload",
                [{"path": "event_id", "message": "event_id or payload", "type": "missing"}],
            )
        if version is not None:
            await self._require_version(event_type, destination, version)
        delivery_id: int | None = None
        if event_id is not None:
            row = await self.store.mapping_preview_event(event_id=event_id, destination=destination)
            if row is None:
                raise AdminError("not_found", f"no event {event_id}")
            if row["type"] != event_type:
                raise AdminError(
                    "invalid",
                    f"event {event_id} is a {row['type']}, not a {event_type}",
                    [{"path": "event_id", "message": "type mismatch", "type": "type_mismatch"}],
                )
            stored, ev_source, ev_occurred = row["payload"], row["source"], row["occurred_at"]
            ev_id: UUID = row["id"]
            delivery_id = row["delivery_id"]
            pinned = row["mapping_version"]
        else:
            try:
                stored = validate_payload(event_type, payload)
            except PayloadError as exc:
                raise AdminError(
                    "invalid", "payload does not match the event type", exc.details
                ) from None
            ev_source = source or await self._default_source(event_type)
            ev_occurred = occurred_at or datetime.now(UTC)
            ev_id, pinned = PREVIEW_EVENT_ID, None
        used: int | None
        if version is not None:
            used, how = version, "requested"
        elif delivery_id is not None:
            # A delivery routed before its pair had any mapping is pinned to none: identity.
            used, how = pinned, ("pinned" if pinned is not None else "identity")
        else:
            active = await self._active_version(event_type, destination)
            used, how = active, ("active" if active is not None else "identity")
        job = Job(
            id=delivery_id or 0,
            event_id=ev_id,
            destination=destination,
            attempt=0,
            max_attempts=None,
            mapping_version=used,
            queue="",
            type=event_type,
            source=ev_source,
            payload=stored,
            occurred_at=ev_occurred,
            received_at=ev_occurred,
        )
        try:
            data = await Renderer(self.store).data_for(job)
        except MappingError as exc:
            raise AdminError(
                "invalid",
                f"version {used} cannot render this payload: {exc}",
                [{"path": "spec", "message": str(exc), "type": "mapping_error"}],
            ) from None
        doc = envelope(job, data)
        return {
            "event_type": event_type,
            "destination": destination,
            "version": used,
            "version_source": how,
            "event_id": str(ev_id),
            "delivery_id": delivery_id,
            "envelope": doc,
            "body": encode(doc).decode(),
        }

    async def _active_version(self, event_type: str, destination: str) -> int | None:
        versions = await self.store.mapping_versions(event_type=event_type, destination=destination)
        return next((v["version"] for v in versions if v["is_active"]), None)

    async def _default_source(self, event_type: str) -> str:
        sources = (await self.store.event_types()).get(event_type) or ["preview"]
        return sources[0]

    # --- routes --------------------------------------------------------------------------

    async def list_routes(self) -> list[dict[str, Any]]:
        return await self.store.routes()

    async def route(self, event_type: str, destination: str) -> dict[str, Any]:
        row = await self.store.route(event_type=event_type, destination=destination)
        if row is None:
            raise AdminError("not_found", f"no route {event_type} -> {destination}")
        history = await self.store.route_history(event_type=event_type, destination=destination)
        return {**row, "history": history}

    async def route_history(
        self, event_type: str | None = None, destination: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return await self.store.route_history(
            event_type=event_type, destination=destination, limit=limit
        )

    async def set_route(
        self, event_type: str, destination: str, change: RouteChange, *, actor: str
    ) -> dict[str, Any]:
        problems = change.problems()
        if problems:
            raise AdminError("invalid", f"invalid route: {problems[0]['message']}", problems)
        existing = await self.store.route(event_type=event_type, destination=destination)
        if existing is None:
            # A new route: only for a type of the catalog and a destination the hub knows, so
            # a typo cannot create deliveries nobody will ever claim.
            types = await self.store.event_types()
            if event_type not in types:
                raise AdminError(
                    "invalid",
                    f"unknown event type {event_type!r}",
                    [{"path": "event_type", "message": "not in the catalog", "type": "unknown"}],
                )
            known = set(HTTP_DESTINATIONS) | set(await self.store.known_destinations())
            if destination not in known:
                raise AdminError(
                    "invalid",
                    f"unknown destination {destination!r}; known: {', '.join(sorted(known))}",
                    [{"path": "destination", "message": "unknown destination", "type": "unknown"}],
                )
        row = await self.store.set_route(
            event_type=event_type,
            destination=destination,
            actor=actor,
            queue=change.queue,
            priority=change.priority,
            delay_s=change.delay_s,
            enabled=change.enabled,
        )
        warnings = []
        if self.queues and row["queue"] not in self.queues:
            warnings.append(
                f"no worker of this configuration listens on queue {row['queue']!r} "
                f"(WORKER_QUEUES={','.join(self.queues)}): its deliveries will wait"
            )
        return {**row, "warnings": warnings}
