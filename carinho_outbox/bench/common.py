"""What every measurement family shares: the database server and scratch databases, the payload,
windows and medians, child processes, and RSS sampling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..embedded_pg import PgServer
from ..embedded_pg import find_server as _find_server
from ..migrate import migrate
from ..settings import sql_dir

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench-results"

# payment.received fans out to crm and operacao: the "2 destinations" of every measurement
# (lead.created gained a WhatsApp greeting route, so it now makes 3 deliveries).
EVENT_TYPE = "payment.received"
EVENT_SOURCE = "financeiro"
DESTINATIONS = ("crm", "operacao")


def event_payload(i: int = 0) -> dict[str, Any]:
    """A valid payment.received payload of about 500 bytes (compact JSON), one client per i
    (per-key ordering is by client_id: distinct clients must not serialise the benchmark)."""
    return {
        "payment_id": f"pay-{i:08d}",
        "invoice_id": f"inv-2026-11-{i:08d}",
        "client_id": f"cli-{i:08d}",
        "amount_cents": 185000,
        "paid_at": "2026-11-29T10:15:00-03:00",
        "method": "pix",
        "payer_name": "Maria Aparecida de Souza Lima",
        "description": (
            "Mensalidade de novembro: cuidadora diurna, segunda a sexta, 8h às 18h, "
            "com acompanhamento em consultas e medicação."
        ),
        "reference": f"E2E-{i:032d}",
        "bank": "Banco do Brasil",
        "notes": "Pago via Pix; comprovante enviado pelo WhatsApp.",
        "installment": 1,
        "installments": 1,
    }


PAYLOAD = event_payload()
PAYLOAD_BYTES = len(json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).encode())


# --- statistics ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Figure:
    """One measured number: the median of its windows, with the windows kept."""

    name: str
    value: float
    unit: str
    windows: list[float] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "windows": self.windows,
            "note": self.note,
        }


def figure(name: str, windows: list[float], unit: str, note: str = "") -> Figure:
    return Figure(name, median(windows), unit, [round(w, 2) for w in windows], note)


# --- database -----------------------------------------------------------------------------


def find_server() -> PgServer:
    return _find_server("carinho-bench-pg-")


@contextlib.contextmanager
def scratch_db(server: PgServer, label: str, *, migrated: bool = True) -> Iterator[str]:
    """A database created for one measurement family and dropped after it."""
    name = f"carinho_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = server.dsn(name)
    try:
        if migrated:
            migrate(dsn, sql_dir())
        yield dsn
    finally:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def server_settings(server: PgServer) -> dict[str, str]:
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "select name, setting from pg_settings where name = any(%s)",
            (
                [
                    "server_version",
                    "max_connections",
                    "shared_buffers",
                    "synchronous_commit",
                    "fsync",
                    "wal_level",
                ],
            ),
        ).fetchall()
    return {r[0]: r[1] for r in rows}


# --- processes ----------------------------------------------------------------------------


def child_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEST_", "WORKER_", "DB_POOL", "LOG_"))
    }
    env["DATABASE_URL"] = dsn
    env["LOG_FORMAT"] = "json"
    env.update(extra)
    return env


class Child:
    """A real process of ours (web, worker, receiver), stopped by its own pid only."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.args = args
        self.log = log
        out: Any = open(log, "ab") if log else subprocess.DEVNULL
        self.popen = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=out)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Receiver:
    """The no-op destination as its own process (see receiver.py)."""

    def __init__(self) -> None:
        self.popen = subprocess.Popen(
            python_module("carinho_outbox.bench.receiver"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline().decode().strip()
        if not line.startswith("PORT "):
            self.popen.kill()
            raise RuntimeError(f"receiver did not start: {line!r}")
        self.port = int(line.split()[1])

    @property
    def pid(self) -> int:
        return self.popen.pid

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _call(self, method: str, path: str) -> Any:
        import httpx

        r = httpx.request(method, self.url(path), timeout=10)
        return r.json()

    def count(self) -> int:
        return int(self._call("GET", "/_stats")["count"])

    def record(self) -> None:
        self._call("POST", "/_record")

    def records(self) -> list[tuple[str, float]]:
        return [(w, t) for w, t in self._call("GET", "/_records")]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


class RssSampler:
    """Peak resident memory of a set of pids, sampled in a thread (psutil)."""

    def __init__(self, pids: Callable[[], list[int]], interval_s: float = 0.2) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for pid in self.pids():
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_mb(self) -> float:
        return max(self.peak.values(), default=0) / 1e6


def wait_until(check: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s}s (last: {last!r})")


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
