"""`carinho-outbox mappings …` and `carinho-outbox routes …`: the operator's view of versioned
mappings and of the routing table. Every error prints its message (for a spec, each offending
rule by name) to stderr and exits 2."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from .mappings_admin import AdminError, MappingsAdmin, RouteChange
from .settings import Settings
from .store import Store, make_pool

EXIT_ERROR = 2
# Big enough for MAX_SPEC_BYTES and any catalog payload; a wrong file must not eat the memory.
MAX_FILE_BYTES = 1024 * 1024


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=_json_default)


def _run(dsn: str, settings: Settings, fn: Callable[[MappingsAdmin], Awaitable[Any]]) -> Any:
    async def runner() -> Any:
        pool = make_pool(dsn, max_size=2, timeout_s=10.0, name="carinho-cli")
        await pool.open(wait=True, timeout=15.0)
        try:
            return await fn(MappingsAdmin(Store(pool), queues=settings.queues))
        finally:
            await pool.close()

    return asyncio.run(runner())


def default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in some containers
        return "cli"


def _read_file(name: str, what: str) -> str:
    try:
        if name == "-":
            text = sys.stdin.read(MAX_FILE_BYTES + 1)
        else:
            with Path(name).open(encoding="utf-8") as fh:
                text = fh.read(MAX_FILE_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError("invalid", f"cannot read {what} file {name!r}: {exc}") from None
    if len(text) > MAX_FILE_BYTES:
        raise AdminError("invalid", f"{what} file {name!r} is larger than {MAX_FILE_BYTES} bytes")
    return text


def _fail(exc: AdminError, err: TextIO) -> int:
    print(f"carinho-outbox: {exc.message}", file=err)
    for detail in exc.details or []:
        print(f"  {detail.get('path', '')}: {detail.get('message', '')}", file=err)
    return EXIT_ERROR


def _ver(value: object) -> str:
    return "-" if value is None else f"v{value}"


# --------------------------------------------------------------------------- mappings


def _print_pairs(rows: list[dict[str, Any]], out: TextIO) -> None:
    print(
        f"{'event type':<20} {'destination':<12} {'active':<7} {'latest':<7} {'versions':>8}  "
        "route",
        file=out,
    )
    for r in rows:
        route = "-" if r["route_enabled"] is None else ("on" if r["route_enabled"] else "off")
        print(
            f"{r['event_type']:<20} {r['destination']:<12} {_ver(r['active_version']):<7} "
            f"{_ver(r['latest_version']):<7} {r['versions']:>8}  {route}",
            file=out,
        )


def _print_show(doc: dict[str, Any], out: TextIO) -> None:
    print(f"{doc['event_type']} -> {doc['destination']}", file=out)
    route = doc["route"]
    if route:
        state = "enabled" if route["enabled"] else "disabled"
        print(
            f"route: queue={route['queue']} priority={route['priority']} "
            f"delay_s={route['delay_s']} {state}",
            file=out,
        )
    else:
        print("route: none (not routed)", file=out)
    print(f"active version: {_ver(doc['active_version'])}", file=out)
    for v in doc["versions"]:
        mark = "*" if v["is_active"] else " "
        print(
            f" {mark} v{v['version']:<4} {v['created_at']:%Y-%m-%d %H:%M:%S%z}  "
            f"{v['created_by'] or '-':<20} {v['note'] or ''}",
            file=out,
        )
    if doc["activations"]:
        print("activations (newest first):", file=out)
        for a in doc["activations"]:
            print(
                f"   {a['activated_at']:%Y-%m-%d %H:%M:%S%z}  {a['action']:<8} "
                f"{_ver(a['previous_version'])} -> v{a['version']}  by {a['activated_by']}",
                file=out,
            )


def cmd_mappings(settings: Settings, dsn: str, args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    cmd = args.mappings_cmd
    actor = getattr(args, "actor", None) or default_actor()
    try:
        if cmd == "list":
            rows = _run(dsn, settings, lambda a: a.list_pairs(args.type))
            if args.json:
                print(_dumps(rows), file=out)
            else:
                _print_pairs(rows, out)
        elif cmd == "show":
            if args.version is not None:
                # Just the spec, so it can be edited and saved again with `set --file`.
                row = _run(
                    dsn, settings, lambda a: a.version(args.type, args.destination, args.version)
                )
                print(_dumps(row["spec"]), file=out)
            else:
                doc = _run(dsn, settings, lambda a: a.show(args.type, args.destination))
                if args.json:
                    print(_dumps(doc), file=out)
                else:
                    _print_show(doc, out)
        elif cmd == "set":
            text = _read_file(args.file, "spec")
            row = _run(
                dsn,
                settings,
                lambda a: a.save(
                    args.type,
                    args.destination,
                    text,
                    activate=args.activate,
                    actor=actor,
                    note=args.note,
                ),
            )
            state = "active" if row["is_active"] else "saved, not active"
            print(f"{args.type} -> {args.destination}: v{row['version']} ({state})", file=out)
            if not row["is_active"]:
                print(
                    f"activate it with: carinho-outbox mappings activate {args.type} "
                    f"{args.destination} {row['version']}",
                    file=err,
                )
        elif cmd == "activate":
            row = _run(
                dsn,
                settings,
                lambda a: a.activate(args.type, args.destination, args.version, actor=actor),
            )
            print(
                f"{args.type} -> {args.destination}: v{row['version']} active "
                f"(was {_ver(row['previous_version'])})",
                file=out,
            )
        elif cmd == "rollback":
            row = _run(
                dsn, settings, lambda a: a.rollback(args.type, args.destination, actor=actor)
            )
            print(
                f"{args.type} -> {args.destination}: rolled back to v{row['version']} "
                f"(was {_ver(row['previous_version'])})",
                file=out,
            )
        elif cmd == "diff":
            doc = _run(
                dsn,
                settings,
                lambda a: a.diff(args.type, args.destination, args.v_from, args.v_to),
            )
            if doc["identical"]:
                print(f"v{doc['from']} and v{doc['to']} are identical", file=out)
            else:
                print("\n".join(doc["diff"]), file=out)
        elif cmd == "preview":
            return _preview(settings, dsn, args, out, err)
        else:  # pragma: no cover - argparse requires a known subcommand
            return EXIT_ERROR
    except AdminError as exc:
        return _fail(exc, err)
    return 0


def _preview(
    settings: Settings, dsn: str, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    event_id: UUID | None = None
    payload: object = None
    if args.event_id is not None:
        try:
            event_id = UUID(args.event_id)
        except ValueError:
            raise AdminError("invalid", f"not an event id: {args.event_id!r}") from None
    else:
        try:
            payload = json.loads(_read_file(args.file, "payload"))
        except ValueError as exc:
            raise AdminError("invalid", f"payload file is not valid JSON: {exc}") from None
    doc = _run(
        dsn,
        settings,
        lambda a: a.preview(
            args.type,
            args.destination,
            event_id=event_id,
            payload=payload,
            version=args.version,
            source=args.source,
        ),
    )
    print(f"rendered with {_ver(doc['version'])} ({doc['version_source']})", file=err)
    # --raw: the exact bytes the destination would receive (what its signature covers).
    print(doc["body"] if args.raw else _dumps(doc["envelope"]), file=out)
    return 0


# --------------------------------------------------------------------------- routes


def cmd_routes(settings: Settings, dsn: str, args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    cmd = args.routes_cmd
    try:
        if cmd == "list":
            rows = _run(dsn, settings, lambda a: a.list_routes())
            if args.json:
                print(_dumps(rows), file=out)
                return 0
            print(
                f"{'event type':<20} {'destination':<12} {'queue':<10} {'priority':>8} "
                f"{'delay_s':>8}  enabled",
                file=out,
            )
            for r in rows:
                print(
                    f"{r['event_type']:<20} {r['destination']:<12} {r['queue']:<10} "
                    f"{r['priority']:>8} {r['delay_s']:>8}  {'yes' if r['enabled'] else 'no'}",
                    file=out,
                )
        elif cmd == "set":
            change = RouteChange(
                queue=args.queue, priority=args.priority, delay_s=args.delay_s, enabled=args.enabled
            )
            actor = args.actor or default_actor()
            row = _run(
                dsn,
                settings,
                lambda a: a.set_route(args.type, args.destination, change, actor=actor),
            )
            verb = "created" if row["created"] else "set"
            print(
                f"{verb} route {row['event_type']} -> {row['destination']}: queue={row['queue']} "
                f"priority={row['priority']} delay_s={row['delay_s']} "
                f"{'enabled' if row['enabled'] else 'disabled'}",
                file=out,
            )
            for warning in row["warnings"]:
                print(f"warning: {warning}", file=err)
        elif cmd == "history":
            rows = _run(
                dsn,
                settings,
                lambda a: a.route_history(args.type, args.destination, args.limit),
            )
            if args.json:
                print(_dumps(rows), file=out)
                return 0
            for r in rows:
                print(
                    f"{r['changed_at']:%Y-%m-%d %H:%M:%S%z}  {r['op']:<8} {r['event_type']} -> "
                    f"{r['destination']}  by {r['changed_by']}  {_route_change(r)}",
                    file=out,
                )
        else:  # pragma: no cover - argparse requires a known subcommand
            return EXIT_ERROR
    except AdminError as exc:
        return _fail(exc, err)
    return 0


def _route_change(row: dict[str, Any]) -> str:
    old, new = row["old_row"] or {}, row["new_row"] or {}
    keys = ("queue", "priority", "delay_s", "enabled")
    if old and new:
        return " ".join(
            f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)
        )
    return " ".join(f"{k}={(new or old).get(k)}" for k in keys)


# --------------------------------------------------------------------------- parsers


def _pair(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", help="event type, e.g. lead.created")
    parser.add_argument("destination", help="destination, e.g. crm")


def _actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="who is making the change (default: cli:<login>)")


def add_parsers(sub: Any) -> None:
    """Add the `mappings` and `routes` command groups to carinho-outbox's subparsers."""
    mappings = sub.add_parser("mappings", help="versioned event mappings per destination")
    msub = mappings.add_subparsers(dest="mappings_cmd", required=True)

    p = msub.add_parser("list", help="every pair: active and latest version")
    p.add_argument("--type", help="only this event type")
    p.add_argument("--json", action="store_true")

    p = msub.add_parser("show", help="a pair's versions and activations, or one version's spec")
    _pair(p)
    p.add_argument("--version", type=int, help="print this version's spec as JSON")
    p.add_argument("--json", action="store_true")

    p = msub.add_parser("set", help="save a new version from a JSON spec file")
    _pair(p)
    p.add_argument("--file", required=True, help="spec JSON file ('-' for stdin)")
    p.add_argument("--activate", action="store_true", help="make it the active version")
    p.add_argument("--note", help="why this version exists")
    _actor(p)

    p = msub.add_parser("activate", help="make a saved version the active one")
    _pair(p)
    p.add_argument("version", type=int)
    _actor(p)

    p = msub.add_parser("rollback", help="activate the highest version below the active one")
    _pair(p)
    _actor(p)

    p = msub.add_parser("diff", help="unified diff of two versions (default: active -> latest)")
    _pair(p)
    p.add_argument("v_from", type=int, nargs="?", metavar="V1")
    p.add_argument("v_to", type=int, nargs="?", metavar="V2")

    p = msub.add_parser("preview", help="render what the destination would get; sends nothing")
    _pair(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--event-id", help="a stored event")
    which.add_argument("--file", help="a payload JSON file ('-' for stdin)")
    p.add_argument("--version", type=int, help="default: the delivery's pinned one, else active")
    p.add_argument("--source", help="source for a --file payload (default: the type's first)")
    p.add_argument("--raw", action="store_true", help="print the exact body bytes")

    routes = sub.add_parser("routes", help="the routing table (type -> destinations)")
    rsub = routes.add_subparsers(dest="routes_cmd", required=True)

    p = rsub.add_parser("list", help="every route")
    p.add_argument("--json", action="store_true")

    p = rsub.add_parser("set", help="change (or create) a route; unspecified fields keep theirs")
    _pair(p)
    p.add_argument("--queue")
    p.add_argument("--priority", type=int, help="lower runs first")
    p.add_argument("--delay-s", type=int, dest="delay_s", help="delay before the first attempt")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False)
    _actor(p)

    p = rsub.add_parser("history", help="who changed which route, newest first")
    p.add_argument("type", nargs="?")
    p.add_argument("destination", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")


COMMANDS: dict[str, Callable[[Settings, str, argparse.Namespace], int]] = {
    "mappings": cmd_mappings,
    "routes": cmd_routes,
}
