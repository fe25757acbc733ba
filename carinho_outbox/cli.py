"""`carinho-outbox`: the operator's command line (migrate, keys, dev, …)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from . import keys as keymod
from . import mappings_cli, ops_cli
from .embedded_pg import resolve_dsn
from .logs import setup_logging
from .migrate import MigrationError, migrate
from .settings import Settings, load_settings, sql_dir
from .store import Store, make_pool


def _with_store(dsn: str, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    async def runner() -> Any:
        pool = make_pool(dsn, max_size=2, timeout_s=10.0, name="carinho-cli")
        await pool.open(wait=True, timeout=15.0)
        try:
            return await fn(Store(pool))
        finally:
            await pool.close()

    return asyncio.run(runner())


def cmd_migrate(settings: Settings, dsn: str, args: argparse.Namespace) -> int:
    applied = migrate(dsn, sql_dir(settings))
    if applied:
        for m in applied:
            print(f"applied {m.path.name}")
    else:
        print("schema is current")
    return 0


async def create_key(
    store: Store,
    *,
    name: str,
    sources: list[str],
    admin: bool,
    rate_per_s: float | None = None,
    burst: int | None = None,
    expires_at: datetime | None = None,
) -> str:
    key = keymod.generate()
    await store.create_key(
        name=name,
        key_hash=keymod.hash_key(key),
        key_prefix=keymod.display_prefix(key),
        sources=sources,
        is_admin=admin,
        rate_per_s=rate_per_s,
        burst=burst,
        expires_at=expires_at,
    )
    return key


def cmd_keys(settings: Settings, dsn: str, args: argparse.Namespace) -> int:
    if args.keys_cmd == "create":
        if not args.source and not args.admin:
            print("give at least one --source or --admin", file=sys.stderr)
            return 2
        expires = (
            datetime.now(UTC) + timedelta(days=args.expires_days) if args.expires_days else None
        )
        key = _with_store(
            dsn,
            lambda s: create_key(
                s,
                name=args.name,
                sources=args.source or [],
                admin=args.admin,
                rate_per_s=args.rate,
                burst=args.burst,
                expires_at=expires,
            ),
        )
        print(f"created key {args.name!r}; it is shown only now:", file=sys.stderr)
        print(key)
        return 0
    if args.keys_cmd == "list":
        rows = _with_store(dsn, lambda s: s.list_keys())
        print(f"{'name':<24} {'prefix':<9} {'admin':<5} {'sources':<30} {'state':<8} last used")
        for r in rows:
            state = (
                "revoked"
                if r["revoked_at"]
                else (
                    "expired"
                    if r["expires_at"] and r["expires_at"] <= datetime.now(UTC)
                    else "active"
                )
            )
            print(
                f"{r['name']:<24} {r['key_prefix']:<9} {('yes' if r['is_admin'] else 'no'):<5} "
                f"{','.join(r['sources']):<30} {state:<8} {r['last_used_at'] or '-'}"
            )
        return 0
    if args.keys_cmd == "revoke":
        ok = _with_store(dsn, lambda s: s.revoke_key(name=args.name))
        print(f"revoked {args.name}" if ok else f"no active key named {args.name!r}")
        return 0 if ok else 1
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carinho-outbox", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate", help="apply pending migrations (safe to run concurrently)")

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    create = keys.add_parser("create", help="create a key; prints it as the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--source", action="append", help="a source it may emit (repeatable)")
    create.add_argument("--admin", action="store_true", help="operator endpoints")
    create.add_argument("--rate", type=float, help="requests per second (token bucket)")
    create.add_argument("--burst", type=int, help="bucket size")
    create.add_argument("--expires-days", type=float, help="expire after this many days")
    keys.add_parser("list", help="list keys (never the keys themselves)")
    revoke = keys.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")

    dev = sub.add_parser("dev", help="run web + worker + scheduler together (make run)")
    dev.add_argument("--no-scheduler", action="store_true")
    mappings_cli.add_parsers(sub)
    ops_cli.add_parser(sub)
    return parser


COMMANDS: dict[str, Callable[[Settings, str, argparse.Namespace], int]] = {
    "migrate": cmd_migrate,
    "keys": cmd_keys,
    **mappings_cli.COMMANDS,
    "dlq": ops_cli.cmd_dlq,
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    setup_logging("text", "WARNING")
    if args.cmd == "dev":
        from .devrun import run_dev

        sys.exit(run_dev(settings, with_scheduler=not args.no_scheduler))
    dsn, _server = resolve_dsn(settings.database_url, settings.pgdata_dir)
    try:
        sys.exit(COMMANDS[args.cmd](settings, dsn, args))
    except MigrationError as exc:
        print(f"carinho-outbox: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
