"""`carinho-outbox mappings …` / `routes …`: main() with argv in-process (stdout captured), and
one real subprocess, against the real database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from carinho_outbox import cli
from carinho_outbox.store import Store
from tests.support.engine import ingest
from tests.support.procs import ROOT, proc_env
from tests.support.samples import PAYLOADS

LEAD = "lead.created"
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("WORKER_QUEUES", "critical,default,low")
    # main() configures process-wide logging for real use; keep the test process's own.
    monkeypatch.setattr(cli, "setup_logging", lambda *a, **k: None)

    def runner(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            cli.main(list(argv))
        out, err = capsys.readouterr()
        code = done.value.code
        return (code if isinstance(code, int) else 1), out, err

    return runner


def write(tmp_path: Path, name: str, doc: object) -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return str(path)


def active(db: psycopg.Connection) -> list[int]:
    return [
        r[0]
        for r in db.execute(
            "select version from event_mappings where event_type = %s and destination = 'crm' "
            "and is_active",
            (LEAD,),
        )
    ]


def test_set_show_activate_rollback_diff(run: Run, tmp_path: Path, db: psycopg.Connection) -> None:
    code, out, _ = run("mappings", "list")
    assert code == 0
    assert any(line.split()[:3] == [LEAD, "crm", "v1"] for line in out.splitlines())

    spec = write(
        tmp_path, "spec.json", {"fields": [{"to": "nome", "from": "name", "format": "upper"}]}
    )
    code, out, err = run(
        "mappings", "set", LEAD, "crm", "--file", spec, "--note", "caps", "--actor", "ana"
    )
    assert (code, out.strip()) == (0, f"{LEAD} -> crm: v2 (saved, not active)")
    assert "mappings activate lead.created crm 2" in err
    assert active(db) == [1]
    code, out, _ = run("mappings", "set", LEAD, "crm", "--file", spec, "--activate")
    assert (code, out.strip()) == (0, f"{LEAD} -> crm: v3 (active)")
    assert active(db) == [3]
    assert db.execute(
        "select created_by, note from event_mappings where event_type = %s "
        "and destination = 'crm' and version = 2",
        (LEAD,),
    ).fetchone() == ("ana", "caps")

    code, out, _ = run("mappings", "show", LEAD, "crm")
    assert code == 0
    assert "active version: v3" in out and "caps" in out and "route: queue=default" in out
    code, out, _ = run("mappings", "show", LEAD, "crm", "--version", "2")
    assert json.loads(out)["fields"] == [{"to": "nome", "from": "name", "format": "upper"}]
    code, out, _ = run("mappings", "show", LEAD, "crm", "--json")
    assert [v["version"] for v in json.loads(out)["versions"]] == [1, 2, 3]

    assert run("mappings", "activate", LEAD, "crm", "2")[:2] == (
        0,
        f"{LEAD} -> crm: v2 active (was v3)\n",
    )
    assert active(db) == [2]
    code, out, _ = run("mappings", "rollback", LEAD, "crm")
    assert (code, out.strip()) == (0, f"{LEAD} -> crm: rolled back to v1 (was v2)")
    assert active(db) == [1]

    code, out, _ = run("mappings", "diff", LEAD, "crm", "1", "3")
    assert code == 0
    assert out.startswith(f"--- {LEAD} -> crm v1\n+++ {LEAD} -> crm v3\n")
    assert '+    {"to": "nome", "from": "name", "format": "upper"}' in out
    assert run("mappings", "diff", LEAD, "crm", "2", "3")[1].strip() == ("v2 and v3 are identical")


def test_errors_name_the_rule_and_exit_2(run: Run, tmp_path: Path, db: psycopg.Connection) -> None:
    bad = write(
        tmp_path,
        "bad.json",
        {"fields": [{"to": "ok", "const": 1}, {"to": "v", "from": "amount", "format": "money"}]},
    )
    code, out, err = run("mappings", "set", LEAD, "crm", "--file", bad, "--activate")
    assert (code, out) == (2, "")
    assert "fields[1] (to='v'): unknown format 'money'" in err
    assert "spec.fields.1:" in err
    assert run("mappings", "set", LEAD, "crm", "--file", write(tmp_path, "x.json", "{oops"))[0] == 2
    code, _, err = run("mappings", "set", LEAD, "crm", "--file", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read spec file" in err
    code, _, err = run("mappings", "activate", LEAD, "crm", "9")
    assert code == 2 and "has no mapping version 9" in err
    code, _, err = run("mappings", "show", LEAD, "nowhere")
    assert code == 2 and "no route or mapping for lead.created -> nowhere" in err
    code, _, err = run("mappings", "rollback", LEAD, "crm")
    assert code == 2 and "no version below the active one" in err
    assert db.execute("select count(*) from event_mappings where version > 1").fetchone() == (0,)


async def _ingest_lead(dsn: str) -> str:
    from carinho_outbox.store import make_pool

    pool = make_pool(dsn, max_size=1, timeout_s=5.0, name="test-ingest")
    await pool.open(wait=True, timeout=10)
    try:
        event_id, _, _ = await ingest(Store(pool), LEAD, PAYLOADS[LEAD], "site")
        return str(event_id)
    finally:
        await pool.close()


def test_preview_from_file_and_from_event(run: Run, tmp_path: Path, dsn: str) -> None:
    spec = write(
        tmp_path,
        "spec.json",
        {
            "mode": "only_listed",
            "fields": [
                {"to": "telefone", "from": "phone", "format": "phone_national"},
                {"to": "id", "from": "@event.id"},
            ],
        },
    )
    assert run("mappings", "set", LEAD, "crm", "--file", spec)[0] == 0  # v2, not active
    payload = write(tmp_path, "lead.json", {"name": "Zé", "phone": "41 99999-8888"})

    code, out, err = run("mappings", "preview", LEAD, "crm", "--file", payload)
    assert code == 0 and "v1 (active)" in err
    doc = json.loads(out)
    assert doc["data"] == {"name": "Zé", "phone": "+5541999998888"}  # normalised like ingress
    assert doc["source"] == "site" and doc["type"] == LEAD

    code, out, err = run(
        "mappings", "preview", LEAD, "crm", "--file", payload, "--version", "2", "--raw"
    )
    assert code == 0 and "v2 (requested)" in err
    raw = out.rstrip("\n")
    assert (
        '"data":{"telefone":"(41) 99999-8888","id":"00000000-0000-0000-0000-000000000000"}' in raw
    )
    assert json.loads(raw)["data"]["telefone"] == "(41) 99999-8888"

    event_id = asyncio.run(_ingest_lead(dsn))
    code, out, err = run("mappings", "preview", LEAD, "crm", "--event-id", event_id, "--raw")
    assert code == 0 and "v1 (pinned)" in err
    assert json.loads(out)["id"] == event_id
    assert json.loads(out)["data"] == PAYLOADS[LEAD]

    assert run("mappings", "preview", LEAD, "crm", "--event-id", "nope")[0] == 2
    assert run("mappings", "preview", "client.updated", "crm", "--event-id", event_id)[0] == 2
    code, _, err = run(
        "mappings", "preview", LEAD, "crm", "--file", write(tmp_path, "bad.json", {"name": "Zé"})
    )
    assert code == 2 and "payload does not match" in err


def test_routes_list_set_history(run: Run, db: psycopg.Connection) -> None:
    code, out, _ = run("routes", "list")
    assert code == 0
    assert any(line.split()[:3] == [LEAD, "marketing", "low"] for line in out.splitlines())

    code, out, err = run(
        "routes",
        "set",
        LEAD,
        "marketing",
        "--priority",
        "120",
        "--delay-s",
        "5",
        "--disable",
        "--actor",
        "cli:bia",
    )
    assert code == 0, err
    assert out.strip() == (
        f"set route {LEAD} -> marketing: queue=low priority=120 delay_s=5 disabled"
    )
    assert db.execute(
        "select priority, delay_s, enabled from routes where event_type = %s "
        "and destination = 'marketing'",
        (LEAD,),
    ).fetchone() == (120, 5, False)

    code, out, err = run("routes", "set", LEAD, "marketing", "--queue", "bulk", "--enable")
    assert code == 0 and "no worker of this configuration listens on queue 'bulk'" in err

    code, out, _ = run("routes", "history", LEAD, "marketing")
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert (
        "update" in lines[0]
        and "queue: low -> bulk" in lines[0]
        and "enabled: False -> True" in lines[0]
    )
    assert "by cli:bia" in lines[1] and "priority: 200 -> 120" in lines[1]
    assert "baseline" in lines[2]
    history = json.loads(run("routes", "history", "--json", "--limit", "2")[1])
    assert len(history) == 2

    for argv in (
        ("routes", "set", LEAD, "marketing"),
        ("routes", "set", LEAD, "marketing", "--priority", "-3"),
        ("routes", "set", LEAD, "marketing", "--queue", "Não"),
        ("routes", "set", "no.such", "crm", "--priority", "1"),
    ):
        code, out, err = run(*argv)
        assert (code, out) == (2, ""), argv
        assert err.startswith("carinho-outbox: "), argv
    assert db.execute("select count(*) from routes_history where op <> 'baseline'").fetchone() == (
        2,
    )


def test_console_entry_point_in_a_real_process(dsn: str, tmp_path: Path) -> None:
    spec = write(tmp_path, "spec.json", {"fields": [{"to": "x", "bogus": 1}]})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "carinho_outbox.cli",
            "mappings",
            "set",
            LEAD,
            "crm",
            "--file",
            spec,
        ],
        env=proc_env(dsn),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "fields[0] (to='x'): unknown key 'bogus'" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "carinho_outbox.cli", "mappings", "list", "--type", LEAD, "--json"],
        env=proc_env(dsn),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert {r["destination"] for r in json.loads(done.stdout)} == {"crm", "marketing", "whatsapp"}
