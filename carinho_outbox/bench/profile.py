"""Where a running process spends its time: py-spy samples it (no restart, no code change) and
the collapsed stacks are summarised by self time and by inclusive time of our own functions."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:]+)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def start(
    pid: int, out: Path, duration_s: float, rate_hz: int = 250
) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration_s))),
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "carinho_outbox/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarise(raw: Path, top: int = 20) -> dict[str, list[tuple[str, float]]]:
    """Self-time leaders, inclusive time of our functions, and time by package."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        leaf = frames[-1]
        self_time[_short(leaf)] += count
        pkg = "other"
        for marker, name in (
            ("psycopg", "psycopg"),
            ("httpx", "httpx"),
            ("httpcore", "httpcore (HTTP client)"),
            ("h11", "h11 (HTTP parser)"),
            ("asyncio", "asyncio"),
            ("logging", "logging"),
            ("pythonjsonlogger", "logging"),
            ("json", "json"),
            ("pydantic", "pydantic"),
            ("carinho_outbox", "carinho_outbox"),
            ("ssl", "ssl"),
            ("selectors", "asyncio"),
        ):
            if marker in leaf:
                pkg = name
                break
        by_package[pkg] += count
        seen: set[str] = set()
        for f in frames:
            if "carinho_outbox" in f or "logging" in f or "httpx" in f or "psycopg" in f:
                key = _short(f)
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += count
    if total == 0:
        return {"self": [], "inclusive": [], "package": []}

    def pct(c: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in c.most_common(n)]

    return {
        "self": pct(self_time, top),
        "inclusive": pct(inclusive, top),
        "package": pct(by_package, 12),
    }
