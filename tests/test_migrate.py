"""Migrations: ordered, once, checksummed, safe to run concurrently; processes refuse a
schema that is behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from carinho_outbox.migrate import MigrationError, discover, ensure_current, migrate
from carinho_outbox.settings import sql_dir
from tests.support.pg import Server
from tests.support.procs import ROOT, proc_env


@pytest.fixture
def empty_dsn(pg_server: Server) -> str:
    import uuid

    from pytest_postgresql.janitor import DatabaseJanitor

    name = f"carinho_empty_{uuid.uuid4().hex[:10]}"
    janitor = DatabaseJanitor(user=pg_server.user, host=pg_server.host, port=pg_server.port,
                              password=pg_server.password, dbname=name)
    janitor.init()
    yield pg_server.dsn(name)
    janitor.drop()


def test_two_concurrent_migrate_runs_both_succeed_and_apply_each_once(empty_dsn: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: migrate(empty_dsn, sql_dir()), range(2)))
    applied = sorted(m.version for r in results for m in r)
    assert applied == [m.version for m in discover(sql_dir())]  # each exactly once overall
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute("select version from schema_migrations order by version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in discover(sql_dir())]
    assert migrate(empty_dsn, sql_dir()) == []


def test_concurrent_migrate_commands_as_processes(empty_dsn: str) -> None:
    env = proc_env(empty_dsn)
    procs = [
        subprocess.Popen([sys.executable, "-m", "carinho_outbox.cli", "migrate"], env=env,
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    texts = [o[0].decode() for o in outs]
    assert sum(t.count("applied ") for t in texts) == len(discover(sql_dir()))


def test_edited_applied_migration_is_an_error(empty_dsn: str, tmp_path: Path) -> None:
    shutil.copytree(sql_dir(), tmp_path / "sql")
    migrate(empty_dsn, tmp_path / "sql")
    first = sorted((tmp_path / "sql").glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(empty_dsn, tmp_path / "sql")


def test_processes_refuse_to_start_on_a_schema_that_is_behind(
    empty_dsn: str, tmp_path: Path
) -> None:
    partial = tmp_path / "sql"
    partial.mkdir()
    shutil.copy(sorted(sql_dir().glob("0001_*.sql"))[0], partial)
    migrate(empty_dsn, partial)
    with pytest.raises(MigrationError, match="run `carinho-outbox migrate`"):
        ensure_current(empty_dsn, sql_dir())
    for module in ("carinho_outbox.worker_cli", "carinho_outbox.web.serve",
                   "carinho_outbox.scheduler"):
        done = subprocess.run([sys.executable, "-m", module], env=proc_env(empty_dsn), cwd=ROOT,
                              capture_output=True, timeout=60)
        assert done.returncode == 2, (module, done.stderr)
        assert b"carinho-outbox migrate" in done.stderr


def test_failed_migration_rolls_back_whole_file(empty_dsn: str, tmp_path: Path) -> None:
    d = tmp_path / "sql"
    d.mkdir()
    (d / "0001_ok.sql").write_text("create table a (x int);")
    (d / "0002_bad.sql").write_text("create table b (x int);\nselect no_such_function();")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate(empty_dsn, d)
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("select to_regclass('b')").fetchone() == (None,)
        assert conn.execute("select version from schema_migrations").fetchall() == [(1,)]
