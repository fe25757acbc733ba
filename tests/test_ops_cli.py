"""`carinho-outbox dlq …` as an operator runs it: real processes, real database."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg

from tests.support.ops import add_dead
from tests.support.procs import ROOT, proc_env


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carinho_outbox.cli", "dlq", *args],
        env=proc_env(dsn),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dlq_list_show_stats(dsn: str, db: psycopg.Connection) -> None:
    a = add_dead(db, "crm", "lead.created", "HTTP 400", ago_s=30)
    b = add_dead(db, "operacao", "service.scheduled", "HTTP 404", ago_s=60)
    c = add_dead(db, "operacao", "service.scheduled", "HTTP 404", ago_s=90)

    listed = cli(dsn, "list")
    assert listed.returncode == 0, listed.stderr
    lines = [ln for ln in listed.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert [int(ln.split()[0]) for ln in lines] == [a, b, c]

    page = json.loads(cli(dsn, "list", "--limit", "2", "--json").stdout)
    assert [x["id"] for x in page["items"]] == [a, b]
    rest = json.loads(cli(dsn, "list", "--limit", "2", "--json", "--cursor", page["next"]).stdout)
    assert [x["id"] for x in rest["items"]] == [c] and rest["next"] is None

    only = json.loads(cli(dsn, "list", "--destination", "crm", "--json").stdout)
    assert [x["id"] for x in only["items"]] == [a]

    shown = cli(dsn, "show", str(b))
    assert shown.returncode == 0
    assert "service.scheduled" in shown.stdout and "#3" in shown.stdout
    assert json.loads(cli(dsn, "show", str(b), "--json").stdout)["last_status"] == 400
    assert cli(dsn, "show", "999999").returncode == 1

    stats = json.loads(cli(dsn, "stats", "--json").stdout)
    assert stats["by_destination"] == {"crm": 1, "operacao": 2}
    assert stats["by_event_type"] == {"lead.created": 1, "service.scheduled": 2}
    assert "by event type" in cli(dsn, "stats").stdout


def test_dlq_reprocess_and_archive(dsn: str, db: psycopg.Connection) -> None:
    a = add_dead(db, "crm")
    b = add_dead(db, "operacao", error="HTTP 404")
    c = add_dead(db, "operacao", error="HTTP 410")
    d = add_dead(db, "marketing")

    assert cli(dsn, "reprocess").returncode == 2  # no ids, no filter, no --all
    bad = cli(dsn, "reprocess", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr

    one = cli(dsn, "reprocess", str(a), "--remap")
    assert one.returncode == 0 and "reprocessed 1 of 1" in one.stdout
    by_filter = cli(dsn, "reprocess", "--destination", "operacao", "--error", "404")
    assert "reprocessed 1" in by_filter.stdout
    archived = cli(dsn, "archive", str(d))
    assert archived.returncode == 0 and "archived 1 of 1" in archived.stdout
    assert cli(dsn, "archive", str(d)).returncode == 1  # no longer dead

    rows = dict(db.execute("select id, status from deliveries").fetchall())
    assert rows == {a: "pending", b: "pending", c: "dead", d: "archived"}
