"""The operator dashboard: login and session, CSRF on actions, event lookup, and a real
browser (Debian's Chromium through Playwright) reprocessing a dead letter until delivered."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import psycopg
import pytest

from carinho_outbox.web.app import create_app
from carinho_outbox.web.session import COOKIE
from tests.conftest import make_settings
from tests.support.engine import eventually, running_worker
from tests.support.ops import AppServer, add_dead, add_delivery, add_event, add_live_worker
from tests.support.receiver import Receiver
from tests.support.web import client, make_key

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def login(c, key: str):  # type: ignore[no-untyped-def]
    return c.post("/dashboard/login", data={"key": key}, follow_redirects=False)


def test_login_needs_an_admin_key_and_sets_a_strict_http_only_cookie(dsn: str) -> None:
    admin = make_key(dsn, "ops", [], admin=True)
    plain = make_key(dsn, "crm-system", ["crm"])
    with client(make_settings(), dsn) as c:
        first = c.get("/dashboard", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/dashboard/login"
        assert "Chave de API" in c.get("/dashboard/login").text
        assert login(c, plain).status_code == 401
        assert login(c, "co_not-a-key").status_code == 401
        assert COOKIE not in c.cookies
        ok = login(c, admin)
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        assert admin not in cookie  # the key itself never leaves the login request
        page = c.get("/dashboard")
        assert page.status_code == 200 and "Mortas (DLQ)" in page.text
        assert c.get("/dashboard/live").status_code == 200
        # A tampered cookie is no session.
        c.cookies.set(COOKIE, c.cookies[COOKIE][:-2] + "xx", path="/dashboard")
        assert c.get("/dashboard", follow_redirects=False).status_code == 303


def test_revoking_the_key_ends_its_sessions(dsn: str, db: psycopg.Connection) -> None:
    admin = make_key(dsn, "ops", [], admin=True)
    with client(make_settings(), dsn) as c:
        login(c, admin)
        assert c.get("/dashboard").status_code == 200
        db.execute("update api_keys set revoked_at = now() where name = 'ops'")
        assert c.get("/dashboard", follow_redirects=False).status_code == 303


def test_dlq_actions_need_the_csrf_token(dsn: str, db: psycopg.Connection) -> None:
    admin = make_key(dsn, "ops", [], admin=True)
    dead = add_dead(db)
    other = add_dead(db)
    with client(make_settings(), dsn) as c:
        login(c, admin)
        page = c.get("/dashboard").text
        token = CSRF.search(page)
        assert token is not None
        forged = c.post(f"/dashboard/dlq/{dead}/reprocess", data={"csrf": "forged"})
        assert forged.status_code == 403
        missing = c.post(f"/dashboard/dlq/{dead}/archive", data={})
        assert missing.status_code == 403
        assert db.execute("select status from deliveries where id = %s", (dead,)).fetchone() == (
            "dead",
        )
        done = c.post(
            f"/dashboard/dlq/{dead}/reprocess",
            data={"csrf": token.group(1)},
            follow_redirects=False,
        )
        assert done.status_code == 303 and "reprocessada" in done.headers["location"]
        archived = c.post(f"/dashboard/dlq/{other}/archive", data={"csrf": token.group(1)})
        assert "arquivada" in archived.text
    rows = dict(db.execute("select id, status from deliveries").fetchall())
    assert rows == {dead: "pending", other: "archived"}


def test_event_lookup_by_id_phone_and_email(dsn: str, db: psycopg.Connection) -> None:
    admin = make_key(dsn, "ops", [], admin=True)
    ev = add_event(db, "client.registered")  # e-mail maria@example.com
    add_delivery(db, ev, "crm", "delivered", ago_s=5)
    lead = add_event(db, "lead.created")  # phone +5541999998888
    with client(make_settings(), dsn) as c:
        login(c, admin)
        by_id = c.get("/dashboard/event", params={"q": ev}).text
        assert ev in by_id and "entregue" in by_id and "client.registered" in by_id
        by_email = c.get("/dashboard/event", params={"q": "  MARIA@example.com "}).text
        assert ev in by_email
        by_phone = c.get("/dashboard/event", params={"q": "(41) 99999-8888"}).text
        assert lead in by_phone and "lead.created" in by_phone
        bad = c.get("/dashboard/event", params={"q": "<script>alert(1)</script>"}).text
        assert "Informe um id de evento" in bad and "<script>alert(1)" not in bad


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
)
async def test_browser_logs_in_reprocesses_a_dead_letter_and_sees_it_delivered(
    dsn: str,
    store,
    db: psycopg.Connection,
    receiver: Receiver,  # type: ignore[no-untyped-def]
) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    admin = await asyncio.to_thread(make_key, dsn, "ops", [], True)
    add_live_worker(db, "w-seed")
    dead = add_dead(db, "crm", "lead.created", "HTTP 400")
    event_id = db.execute("select event_id::text from deliveries where id = %s", (dead,)).fetchone()
    assert event_id is not None
    settings = make_settings(DEST_CRM_URL=receiver.url("/crm"), DASHBOARD_REFRESH_S="1")
    ARTIFACTS.mkdir(exist_ok=True)
    with AppServer(create_app(settings, dsn)) as server:
        async with running_worker(settings, store, dsn), playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1600})
                await page.goto(f"{server.url}/dashboard")
                assert page.url.endswith("/dashboard/login")
                await page.fill("#key", admin)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{server.url}/dashboard")
                assert await page.text_content("#count-dead") == "1"
                assert await page.text_content("#count-workers") != "0"
                await page.click(f"tr[data-dead-id='{dead}'] button.reprocess")
                await page.wait_for_selector(".flash")
                assert "reprocessada" in (await page.text_content(".flash") or "")
                # The worker delivers it; the self-refreshing page shows the DLQ empty.
                await asyncio.to_thread(receiver.wait_for, 1)
                await page.wait_for_function(
                    "document.getElementById('count-dead').textContent.trim() === '0'",
                    timeout=15_000,
                )
                await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                await page.fill("#q", event_id[0])
                await page.click(".lookup button")
                await page.wait_for_selector("tr[data-delivery='crm'] .status")
                status = await page.text_content("tr[data-delivery='crm'] .status")
                assert status == "entregue"
                await page.screenshot(path=str(ARTIFACTS / "dashboard-event.png"), full_page=True)
            finally:
                await browser.close()
    assert receiver.requests[0].json["id"] == event_id[0]
    await eventually(
        lambda: (
            db.execute("select status from deliveries where id = %s", (dead,)).fetchone()
            == ("delivered",)
        )
    )
    assert os.path.getsize(ARTIFACTS / "dashboard.png") > 10_000
