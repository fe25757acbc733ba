"""`carinho-web --workers N`: one unit uses every core (uvicorn's supervisor, shared port)."""

from __future__ import annotations

import httpx
import psycopg

from tests.support.procs import Proc, proc_env, wait_until
from tests.support.samples import PAYLOADS
from tests.support.standins import free_port
from tests.support.web import bearer, make_key


def web_backends(db: psycopg.Connection) -> int:
    row = db.execute(
        "select count(distinct client_port) from pg_stat_activity"
        " where application_name = 'carinho-web' and datname = current_database()"
    ).fetchone()
    return row[0] if row else 0


def test_two_web_workers_share_one_port_and_stop_on_sigterm(
    dsn: str, db: psycopg.Connection
) -> None:
    key = make_key(dsn, "finance", ["financeiro"])
    port = free_port()
    web = Proc("carinho_outbox.web.serve", proc_env(dsn), "--port", str(port), "--workers", "2")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout_s=60)
        # Each child opens its own pool (min one connection) when it starts.
        wait_until(lambda: web_backends(db) >= 2, timeout_s=30)
        with httpx.Client(base_url=base, timeout=10) as c:
            codes = [
                c.post(
                    "/events",
                    headers=bearer(key),
                    json={"type": "payment.received", "payload": PAYLOADS["payment.received"]},
                ).status_code
                for _ in range(20)
            ]
    finally:
        code = web.terminate(timeout_s=30)
    assert codes == [202] * 20
    assert db.execute("select count(*) from events").fetchone() == (20,)
    assert code == 0
    assert not up()


def test_workers_below_one_is_refused(dsn: str) -> None:
    web = Proc("carinho_outbox.web.serve", proc_env(dsn), "--workers", "0")
    assert web.popen.wait(timeout=30) == 2
