"""The operator CLI as a newcomer runs it: real processes, real database."""

from __future__ import annotations

import subprocess
import sys

import psycopg

from carinho_outbox.keys import hash_key
from tests.support.procs import ROOT, proc_env


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carinho_outbox.cli", *args],
                          env=proc_env(dsn), cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_keys_create_list_revoke(dsn: str, db: psycopg.Connection) -> None:
    made = cli(dsn, "keys", "create", "--name", "site-form", "--source", "site",
               "--source", "whatsapp", "--rate", "5")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("co_") and len(key) > 30
    row = db.execute("select key_hash, sources, is_admin, rate_per_s from api_keys").fetchone()
    assert row == (hash_key(key), ["site", "whatsapp"], False, 5.0)
    assert key not in str(db.execute("select * from api_keys").fetchall())  # only the hash

    listed = cli(dsn, "keys", "list")
    assert "site-form" in listed.stdout and key not in listed.stdout and "active" in listed.stdout

    assert cli(dsn, "keys", "revoke", "site-form").returncode == 0
    assert "revoked" in cli(dsn, "keys", "list").stdout
    assert cli(dsn, "keys", "revoke", "nope").returncode == 1
    assert cli(dsn, "keys", "create", "--name", "x").returncode == 2  # no scope given


def test_migrate_is_idempotent(dsn: str) -> None:
    done = cli(dsn, "migrate")
    assert done.returncode == 0 and "schema is current" in done.stdout
