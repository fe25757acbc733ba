"""The shipped deployment files parse and say what they must: systemd units (verified by
systemd-analyze when present), the Supervisor program file, and the production env example."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carinho_outbox.settings import HTTP_DESTINATIONS, Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "carinho_outbox" / "deploy"
UNITS = DEPLOY / "systemd"
SERVICES = ["carinho-web@.service", "carinho-worker.service", "carinho-scheduler.service"]
GRACE_S = Settings.model_fields["shutdown_grace_s"].default
WEB_DRAIN_S = 10  # uvicorn's timeout_graceful_shutdown in web/serve.py


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value.strip())
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.parametrize("name", SERVICES)
def test_services_stop_gracefully_and_restart(name: str) -> None:
    service = unit(name)["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "/etc/carinho-outbox/outbox.env"
    assert service["StandardOutput"] == "journal"
    assert service["SyslogIdentifier"]
    stop_s = seconds(service["TimeoutStopSec"])
    drain_s = WEB_DRAIN_S if "web" in name else GRACE_S
    assert stop_s > drain_s + 5, f"{name}: TimeoutStopSec must outlast the drain"
    assert "carinho-migrate.service" in unit(name)["Unit"]["Requires"]


def test_worker_unit_autoscales() -> None:
    exec_start = unit("carinho-worker.service")["Service"]["ExecStart"]
    assert "carinho-worker --processes auto" in exec_start
    assert "--min-processes 1" in exec_start and "--max-processes" in exec_start


def test_web_unit_is_a_template_on_its_port() -> None:
    service = unit("carinho-web@.service")["Service"]
    assert "--port %i" in service["ExecStart"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart binaries exist: point the copies at this virtualenv.
    bindir = Path(sys.executable).parent
    env_file = tmp_path / "outbox.env"
    env_file.write_text("")
    for path in UNITS.iterdir():
        text = (
            path.read_text()
            .replace("/opt/carinho-outbox/.venv/bin", str(bindir))
            .replace("/opt/carinho-outbox", str(tmp_path))
            .replace("/etc/carinho-outbox/outbox.env", str(env_file))
        )
        (tmp_path / path.name).write_text(text)
    names = [
        "carinho-web@8000.service",
        "carinho-worker.service",
        "carinho-scheduler.service",
        "carinho-migrate.service",
        "carinho-outbox.target",
    ]
    result = subprocess.run(
        ["systemd-analyze", "verify", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on mere warnings (unknown keys, bad values): any output is a failure.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(tmp_path) in line or "carinho" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_supervisor_programs() -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.read(DEPLOY / "supervisor" / "carinho-outbox.conf")
    assert parser["group:carinho"]["programs"].split(",") == [
        "carinho-web",
        "carinho-worker",
        "carinho-scheduler",
    ]
    for name in ("carinho-web", "carinho-worker", "carinho-scheduler"):
        program = parser[f"program:{name}"]
        assert program["stopsignal"] == "TERM"
        drain_s = WEB_DRAIN_S if name == "carinho-web" else GRACE_S
        assert int(program["stopwaitsecs"]) > drain_s + 5
        assert program["autorestart"] in ("true", "unexpected")
        assert program["stopasgroup"] == "true" and program["killasgroup"] == "true"
        assert program["stdout_logfile"].startswith("/var/log/carinho-outbox/")
        assert program["redirect_stderr"] == "true"
        assert ". /etc/carinho-outbox/outbox.env; exec " in program["command"]
    assert "--processes auto" in parser["program:carinho-worker"]["command"]


def _env_example() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (DEPLOY / "outbox.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_env_example_names_real_settings() -> None:
    env = _env_example()
    known = {name.upper() for name in Settings.model_fields}
    names = "|".join(d.upper() for d in HTTP_DESTINATIONS)
    per_dest = re.compile(
        rf"DEST_({names})_(URL|TOKEN|SECRET|TIMEOUT_S|RETRY_BASE_S|RETRY_CAP_S|MAX_ATTEMPTS)"
    )
    unknown = [k for k in env if k not in known and not per_dest.fullmatch(k)]
    assert not unknown, f"not settings: {unknown}"
    settings = load_settings(env=env)
    assert settings.shutdown_grace_s == GRACE_S
    assert all(settings.destinations[d].configured for d in HTTP_DESTINATIONS)


def test_env_example_connection_budget_fits() -> None:
    env = _env_example()
    pool = int(env["DB_POOL_MAX"])
    per_host = 2 * pool + 4 * (min(pool, 4) + 1) + 1 + 2
    assert per_host == 39  # the figure quoted in the file's header
    assert 2 * per_host + 10 <= 100 - 3
