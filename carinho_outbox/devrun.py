"""`make run`: database, migrations, a development key, then web + worker + scheduler (and a
local sink for unconfigured destinations) in the foreground with one log; Ctrl-C stops all."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from .cli import create_key
from .embedded_pg import resolve_dsn
from .migrate import migrate
from .settings import HTTP_DESTINATIONS, Settings, sql_dir
from .store import Store, make_pool

DEV_SINK_PORT = 8099
ALL_SOURCES = ["site", "whatsapp", "zapi", "crm", "operacao", "financeiro"]


async def _make_key(dsn: str, name: str) -> str:
    pool = make_pool(dsn, max_size=1, timeout_s=10.0, name="carinho-dev")
    await pool.open(wait=True, timeout=15.0)
    try:
        return await create_key(Store(pool), name=name, sources=ALL_SOURCES, admin=True)
    finally:
        await pool.close()


def dev_key(dsn: str, settings: Settings, embedded: bool) -> str:
    """Reuse the key kept beside the embedded database; otherwise create a dated one."""
    key_file = settings.pgdata_dir / "dev-admin-key"
    if embedded and key_file.exists():
        return key_file.read_text().strip()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    key = asyncio.run(_make_key(dsn, f"dev-{stamp}"))
    if embedded:
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
    return key


def _child(module: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env)


def run_dev(settings: Settings, with_scheduler: bool = True) -> int:
    embedded = not settings.database_url
    dsn, server = resolve_dsn(settings.database_url, settings.pgdata_dir)
    for m in migrate(dsn, sql_dir(settings)):
        print(f"applied migration {m.path.name}")
    key = dev_key(dsn, settings, embedded)

    env = dict(os.environ)
    env["DATABASE_URL"] = dsn
    env.setdefault("LOG_FORMAT", "text")
    env.setdefault("LOG_DELIVERED", "each")  # a newcomer watches each delivery arrive
    sinked = [n for n in HTTP_DESTINATIONS if not env.get(f"DEST_{n.upper()}_URL")]
    use_sink = sinked and env.get("DEV_SINK", "1") != "0"
    if use_sink:
        for name in sinked:
            env[f"DEST_{name.upper()}_URL"] = f"http://127.0.0.1:{DEV_SINK_PORT}/{name}"

    port = settings.port
    print(
        "\n"
        f"  carinho_outbox is starting on http://127.0.0.1:{port}\n"
        f"  database: {'embedded (.pgdata/)' if embedded else 'DATABASE_URL'}\n"
        f"  development admin key (all sources):\n\n    {key}\n\n"
        "  try:\n"
        f"    curl -s -X POST http://127.0.0.1:{port}/events \\\n"
        f"      -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
        '      -d \'{"type":"lead.created","source":"site",'
        '"payload":{"name":"Maria","phone":"(41) 99999-8888"}}\'\n'
        + (
            f"\n  destinations without DEST_<NAME>_URL go to the local sink on port "
            f"{DEV_SINK_PORT}: {', '.join(sinked)}\n"
            if use_sink
            else ""
        )
        + "  Ctrl-C stops everything.\n",
        flush=True,
    )

    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    if use_sink:
        children.append(
            ("sink", _child("carinho_outbox.devsink", env, "--port", str(DEV_SINK_PORT)))
        )
    children.append(("web", _child("carinho_outbox.web.serve", env)))
    children.append(("worker", _child("carinho_outbox.worker_cli", env)))
    if with_scheduler:
        children.append(("scheduler", _child("carinho_outbox.scheduler", env)))

    try:
        return supervise(children, settings.shutdown_grace_s)
    finally:
        del server  # the embedded server stops with its last handle


def stop_children(children: list[tuple[str, subprocess.Popen[bytes]]], grace_s: float) -> None:
    """SIGTERM every child, give them the drain grace, then kill what is left."""
    for _, proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 5
    for _, proc in children:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def supervise(children: list[tuple[str, subprocess.Popen[bytes]]], grace_s: float) -> int:
    """Run in the foreground until Ctrl-C / SIGTERM or until a child exits (then stop the rest,
    exit code 1)."""
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    try:
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    print(
                        f"{name} exited with code {proc.returncode}; stopping the rest",
                        file=sys.stderr,
                        flush=True,
                    )
                    exit_code = 1
                    stopping = True
            time.sleep(0.2)
    finally:
        stop_children(children, grace_s)
    return exit_code


__all__ = ["run_dev", "stop_children", "supervise"]
