"""`carinho-outbox dlq list|show|reprocess|archive|stats`: the dead-letter queue from a shell.

The same filters, validation and transitions as the HTTP API (web/dlq.py): filters go
through the same pydantic models, transitions through the same store statements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .ops import dlq_stats
from .payloads import pydantic_error_details
from .settings import Settings
from .store import Store, make_pool
from .web.errors import ApiError
from .web.jsonify import jsonable
from .web.opsutil import decode_cursor, encode_cursor, like_literal
from .web.schemas import DlqBulkReprocess, DlqListQuery

M = TypeVar("M", bound=BaseModel)


class CliInputError(Exception):
    pass


def _run(dsn: str, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    async def runner() -> Any:
        pool = make_pool(dsn, max_size=2, timeout_s=10.0, name="carinho-cli")
        await pool.open(wait=True, timeout=15.0)
        try:
            return await fn(Store(pool))
        finally:
            await pool.close()

    return asyncio.run(runner())


def _validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        lines = [
            f"  --{d['path'].replace('_', '-')}: {d['message']}"
            for d in pydantic_error_details(exc, "")
        ]
        raise CliInputError("invalid options:\n" + "\n".join(lines)) from None


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "event_type": args.event_type,
        "destination": args.destination,
        "since": args.since,
        "until": args.until,
        "error": args.error,
    }


def _print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def _short(text: str | None, width: int) -> str:
    text = (text or "-").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def dlq_list(dsn: str, args: argparse.Namespace) -> int:
    query = _validate(DlqListQuery, {**_filters(args), "limit": args.limit, "cursor": args.cursor})
    try:
        after = decode_cursor(query.cursor) if query.cursor else None
    except ApiError:
        raise CliInputError(
            "invalid options:\n  --cursor: not a cursor this tool printed"
        ) from None
    rows = _run(
        dsn,
        lambda s: s.dlq_list(
            event_type=query.event_type,
            destination=query.destination,
            since=query.since,
            until=query.until,
            error=like_literal(query.error),
            after=after,
            limit=query.limit + 1,
        ),
    )
    page = rows[: query.limit]
    cursor = encode_cursor(page[-1]["dead_at"], page[-1]["id"]) if len(rows) > query.limit else None
    if args.json:
        _print_json({"items": page, "next": cursor})
        return 0
    print(
        f"{'id':>10}  {'dead at (UTC)':<19}  {'event type':<18} {'destination':<12} "
        f"{'att':>3}  last error"
    )
    for r in page:
        dead_at = r["dead_at"].strftime("%Y-%m-%d %H:%M:%S") if r["dead_at"] else "-"
        print(
            f"{r['id']:>10}  {dead_at:<19}  {r['event_type']:<18} {r['destination']:<12} "
            f"{r['attempts']:>3}  {_short(r['last_error'], 60)}"
        )
    if not page:
        print("(the dead-letter queue is empty for this filter)")
    if cursor:
        print(f"\nmore: --cursor {cursor}")
    return 0


def dlq_show(dsn: str, args: argparse.Namespace) -> int:
    async def fetch(store: Store) -> dict[str, Any] | None:
        row = await store.dlq_get(id=args.id)
        if row is None:
            return None
        row["event"] = await store.event_detail(row["event_id"])
        return row

    row = _run(dsn, fetch)
    if row is None:
        print(f"no dead letter with id {args.id}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(row)
        return 0
    event = row["event"] or {}
    print(f"dead letter {row['id']} ({row['status']})")
    print(f"  event        {row['event_id']}  {row['event_type']} from {row['source']}")
    print(f"  destination  {row['destination']}  (mapping v{row['mapping_version']})")
    print(f"  received     {row['received_at']}")
    print(f"  dead at      {row['dead_at']}   reprocessed {row['reprocessed']}x")
    print(f"  last error   {row['last_error']}  (status {row['last_status']})")
    print(f"  last response {_short(row['last_response'], 200)}")
    print(f"  payload      {json.dumps(event.get('payload'), ensure_ascii=False)[:400]}")
    print("  attempts:")
    for a in row["attempts_log"]:
        print(
            f"    #{a['attempt']:<3} {a['created_at']}  {a['outcome']:<13} "
            f"status={a['response_status']}  {_short(a['error'], 60)}"
        )
    return 0


def dlq_reprocess(dsn: str, args: argparse.Namespace) -> int:
    if args.ids:
        rows = _run(dsn, lambda s: s.reprocess_dead(ids=args.ids, remap=args.remap))
        print(f"reprocessed {len(rows)} of {len(args.ids)}")
        return 0 if len(rows) == len(args.ids) else 1
    body = _validate(
        DlqBulkReprocess,
        {**_filters(args), "remap": args.remap, "all": args.all, "limit": args.limit},
    )
    if body.is_empty() and not body.all:
        raise CliInputError("give ids, at least one filter, or --all for the whole DLQ")
    rows = _run(
        dsn,
        lambda s: s.reprocess_dead(
            event_type=body.event_type,
            destination=body.destination,
            since=body.since,
            until=body.until,
            error=like_literal(body.error),
            remap=body.remap,
            limit=body.limit,
        ),
    )
    print(f"reprocessed {len(rows)}")
    if len(rows) >= body.limit:
        print(f"the limit ({body.limit}) was reached: run again for the rest")
    return 0


def dlq_archive(dsn: str, args: argparse.Namespace) -> int:
    done = _run(dsn, lambda s: s.archive_dead(ids=args.ids))
    print(f"archived {len(done)} of {len(args.ids)}")
    return 0 if len(done) == len(args.ids) else 1


def dlq_stats_cmd(dsn: str, args: argparse.Namespace) -> int:
    stats = _run(dsn, dlq_stats)
    if args.json:
        _print_json(stats)
        return 0
    print(f"dead letters: {stats['size']}")
    for title, key in (("by event type", "by_event_type"), ("by destination", "by_destination")):
        print(f"\n{title}:")
        for name, count in sorted(stats[key].items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {name:<24} {count:>8}")
    if stats["top_errors"]:
        print("\ntop errors:")
        for e in stats["top_errors"]:
            print(f"  {e['count']:>8}  {_short(e['error'], 80)}")
    return 0


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--event-type", help="e.g. lead.created")
    p.add_argument("--destination", help="e.g. crm")
    p.add_argument("--since", help="dead at or after (ISO 8601 with offset)")
    p.add_argument("--until", help="dead before (ISO 8601 with offset)")
    p.add_argument("--error", help="text the last error contains (taken literally)")


def add_parser(sub: Any) -> None:
    """Adds `dlq …` to the `carinho-outbox` parser."""
    dlq = sub.add_parser("dlq", help="the dead-letter queue").add_subparsers(
        dest="dlq_cmd", required=True
    )
    ls = dlq.add_parser("list", help="dead letters, newest first")
    _add_filters(ls)
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--cursor", help="continue after a previous page")
    ls.add_argument("--json", action="store_true")
    show = dlq.add_parser("show", help="one dead letter with its event and every attempt")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    rep = dlq.add_parser("reprocess", help="dead → pending, by ids or by filter")
    rep.add_argument("ids", type=int, nargs="*")
    _add_filters(rep)
    rep.add_argument("--remap", action="store_true", help="use the mapping version active now")
    rep.add_argument("--all", action="store_true", help="the whole DLQ (when no filter)")
    rep.add_argument("--limit", type=int, default=10_000)
    arc = dlq.add_parser("archive", help="dead → archived")
    arc.add_argument("ids", type=int, nargs="+")
    stats = dlq.add_parser("stats", help="counts by event type and destination")
    stats.add_argument("--json", action="store_true")


DLQ_COMMANDS: dict[str, Callable[[str, argparse.Namespace], int]] = {
    "list": dlq_list,
    "show": dlq_show,
    "reprocess": dlq_reprocess,
    "archive": dlq_archive,
    "stats": dlq_stats_cmd,
}


def cmd_dlq(settings: Settings, dsn: str, args: argparse.Namespace) -> int:
    try:
        return DLQ_COMMANDS[args.dlq_cmd](dsn, args)
    except CliInputError as exc:
        print(f"carinho-outbox dlq: {exc}", file=sys.stderr)
        return 2
