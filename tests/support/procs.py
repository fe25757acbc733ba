"""Real worker / web processes for the multi-process and fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import FAST_ENV

ROOT = Path(__file__).resolve().parents[2]


def proc_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEST_")}
    env.update(FAST_ENV)
    env["DATABASE_URL"] = dsn
    env["LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


class Proc:
    def __init__(self, module: str, env: dict[str, str], *args: str, log: Path | None = None):
        self.log_path = log
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, cwd=ROOT, stdout=out, stderr=out
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self, timeout_s: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise


def start_worker(dsn: str, log: Path | None = None, *args: str, **env: str) -> Proc:
    return Proc("carinho_outbox.worker_cli", proc_env(dsn, **env), *args, log=log)


def wait_until(check, timeout_s: float = 60.0, interval_s: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last: {last!r})")
