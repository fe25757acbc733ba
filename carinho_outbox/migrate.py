"""Numbered plain-SQL migrations: each once, in order, in its own transaction, under an
advisory lock, recorded with a checksum in schema_migrations (graphile-worker's pattern)."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

# An arbitrary constant: every process that migrates takes the same lock, so two `migrate`
# runs at once serialise instead of racing on DDL.
MIGRATION_LOCK_KEY = 0x6361_7269_6E68  # "carinh"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
create table if not exists schema_migrations (
    version     integer primary key,
    name        text not null,
    checksum    text not null,
    applied_at  timestamptz not null default now()
)
"""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"migration file name not NNNN_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return found


def _applied(conn: psycopg.Connection) -> dict[int, str]:
    exists = conn.execute("select to_regclass('schema_migrations') is not null").fetchone()
    if not exists or not exists[0]:
        return {}
    return dict(conn.execute("select version, checksum from schema_migrations").fetchall())


def check_checksums(migrations: list[Migration], applied: dict[int, str]) -> None:
    known = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"database has migration {version:04d} that this code does not know: "
                "is this an older release?"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.path.name} was edited after it was applied "
                "(checksum differs); add a new migration instead"
            )


def pending(conn: psycopg.Connection, directory: Path) -> list[Migration]:
    migrations = discover(directory)
    applied = _applied(conn)
    check_checksums(migrations, applied)
    return [m for m in migrations if m.version not in applied]


def migrate(dsn: str, directory: Path) -> list[Migration]:
    """Apply what is pending; returns what this call applied."""
    done: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(_BOOTSTRAP)
            for migration in pending(conn, directory):
                with conn.transaction():
                    conn.execute(migration.text)  # type: ignore[arg-type]
                    conn.execute(
                        "insert into schema_migrations (version, name, checksum)"
                        " values (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info(
                    "migration applied",
                    extra={"action": "migrated", "migration": migration.path.name},
                )
                done.append(migration)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return done


def ensure_current(dsn: str, directory: Path) -> None:
    """Refuse to run on a schema that is behind the code (or was edited)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        todo = pending(conn, directory)
    if todo:
        names = ", ".join(m.path.name for m in todo)
        raise MigrationError(
            f"database schema is behind: {len(todo)} migration(s) not applied ({names}); "
            "run `carinho-outbox migrate` first"
        )
