"""`make demo`: the whole hub on this machine, with a realistic day of Carinho's events.

Starts the database (embedded unless DATABASE_URL is set), migrations, web + worker +
scheduler, and the local dev sink standing in for every destination (CRM, Operação, …, and
Slack/Discord for alerts) with DEMO_FAIL_RATE of its answers a 503, so retries, dead letters
and alerts happen. It then posts a day of events (leads from the site and WhatsApp, clients,
services, payments, payouts, feedback) over about a minute, prints the dashboard URL and the
admin key, and keeps running until Ctrl-C.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .devrun import DEV_SINK_PORT, _child, dev_key, stop_children, supervise
from .embedded_pg import resolve_dsn
from .migrate import migrate
from .settings import HTTP_DESTINATIONS, Settings, load_settings, sql_dir

DEMO_JOURNEYS = 120
POST_OVER_S = 60.0
WEB_READY_TIMEOUT_S = 60.0

FIRST = [
    "Maria",
    "Ana",
    "José",
    "Antônia",
    "Francisca",
    "João",
    "Lúcia",
    "Carlos",
    "Helena",
    "Paulo",
    "Teresa",
    "Rita",
    "Luiz",
    "Sebastiana",
    "Raimunda",
    "Pedro",
]
LAST = [
    "Souza",
    "Silva",
    "Oliveira",
    "Santos",
    "Pereira",
    "Lima",
    "Ferreira",
    "Costa",
    "Rodrigues",
    "Almeida",
    "Nascimento",
    "Carvalho",
]
DDD = [11, 21, 31, 41, 47, 48, 51, 61, 71, 81]
UTM = [
    ("google", "cpc", "cuidador-idosos"),
    ("facebook", "social", "dia-das-maes"),
    ("instagram", "social", "home-care"),
    (None, None, None),
]
REASONS = ["família viajou", "internação hospitalar", "remarcado pela família"]
COMMENTS = ["Cuidadora muito atenciosa", "Chegou no horário", "Minha mãe adorou", None]


def ascii_only(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def phone(rng: random.Random) -> str:
    return f"+55{rng.choice(DDD)}9{rng.randint(6, 9)}{rng.randint(0, 9_999_999):07d}"


def day_of_events(
    rng: random.Random, journeys: int = DEMO_JOURNEYS, now: datetime | None = None
) -> list[dict[str, Any]]:
    """A day of Carinho as POST /events bodies: each journey a lead, some become clients and
    get a service, paid or not, rated or not. Deterministic for a given generator."""
    now = now or datetime.now(UTC)
    out: list[dict[str, Any]] = []

    def add(event_type: str, source: str, payload: dict[str, Any], at: datetime) -> None:
        out.append(
            {
                "type": event_type,
                "source": source,
                "payload": payload,
                "occurred_at": at.isoformat(),
                "idempotency_key": f"demo-{now:%Y%m%d%H%M%S}-{len(out)}",
            }
        )

    for n in range(journeys):
        at = now - timedelta(hours=24) + timedelta(minutes=rng.randint(0, 24 * 60 - 1))
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        tel = phone(rng)
        email = f"{ascii_only(name.split()[0]).lower()}.{n}@example.com"
        utm_source, utm_medium, utm_campaign = rng.choice(UTM)
        lead: dict[str, Any] = {"name": name, "phone": tel, "message": "Preciso de cuidadora"}
        if utm_source:
            lead.update(utm_source=utm_source, utm_medium=utm_medium, utm_campaign=utm_campaign)
        if rng.random() < 0.3:
            add(
                "whatsapp.inbound",
                "zapi",
                {"phone": tel, "message_id": f"3EB0{n:06d}", "text": "Olá, quero um orçamento"},
                at,
            )
        add("lead.created", "whatsapp" if rng.random() < 0.3 else "site", lead, at)
        if rng.random() < 0.5:
            continue
        client_id, service_id, caregiver = f"c-{n}", f"s-{n}", f"cg-{rng.randint(1, 30)}"
        at += timedelta(minutes=rng.randint(10, 120))
        add(
            "client.registered",
            "crm",
            {"client_id": client_id, "name": name, "email": email, "phone": tel},
            at,
        )
        starts = at + timedelta(hours=rng.randint(2, 12))
        add(
            "service.scheduled",
            "crm",
            {
                "service_id": service_id,
                "client_id": client_id,
                "caregiver_id": caregiver,
                "starts_at": starts.isoformat(),
                "ends_at": (starts + timedelta(hours=12)).isoformat(),
            },
            at,
        )
        add(
            "invoice.created",
            "financeiro",
            {
                "invoice_id": f"i-{n}",
                "client_id": client_id,
                "amount_cents": 45_000,
                "due_date": (starts + timedelta(days=10)).date().isoformat(),
            },
            at,
        )
        if rng.random() < 0.1:
            add(
                "service.cancelled",
                "operacao",
                {
                    "service_id": service_id,
                    "cancelled_at": at.isoformat(),
                    "reason": rng.choice(REASONS),
                },
                at,
            )
            continue
        add(
            "service.started",
            "operacao",
            {"service_id": service_id, "started_at": starts.isoformat()},
            at,
        )
        add(
            "service.completed",
            "operacao",
            {
                "service_id": service_id,
                "client_id": client_id,
                "caregiver_id": caregiver,
                "completed_at": (starts + timedelta(hours=12)).isoformat(),
            },
            at,
        )
        if rng.random() < 0.85:
            add(
                "payment.received",
                "financeiro",
                {
                    "payment_id": f"p-{n}",
                    "invoice_id": f"i-{n}",
                    "client_id": client_id,
                    "amount_cents": 45_000,
                    "paid_at": at.isoformat(),
                },
                at,
            )
        else:
            add(
                "payment.failed",
                "financeiro",
                {
                    "payment_id": f"p-{n}",
                    "invoice_id": f"i-{n}",
                    "client_id": client_id,
                    "reason": "cartão recusado",
                },
                at,
            )
        if rng.random() < 0.6:
            feedback = {"service_id": service_id, "rating": rng.choice([3, 4, 5, 5, 5])}
            comment = rng.choice(COMMENTS)
            if comment:
                feedback["comment"] = comment
            add("feedback.received", "operacao", feedback, at)
    add(
        "payout.processed",
        "financeiro",
        {
            "payout_id": "po-1",
            "caregiver_id": "cg-1",
            "amount_cents": 320_000,
            "period": f"{now:%Y-%m}",
        },
        now,
    )
    return out


def post_day(base_url: str, key: str, events: list[dict[str, Any]], over_s: float) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    pause = over_s / max(1, len(events))
    accepted = refused = 0
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        for body in events:
            try:
                r = http.post("/events", json=body)
            except httpx.HTTPError:
                refused += 1
                continue
            accepted += r.status_code in (200, 202)
            refused += r.status_code not in (200, 202)
            time.sleep(pause)
    print(f"  demo: posted {accepted} events ({refused} refused)", flush=True)


def wait_ready(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def demo_env(dsn: str, fail_rate: float) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = dsn
    env.setdefault("LOG_FORMAT", "text")
    env.setdefault("LOG_LEVEL", "WARNING")
    sink = f"http://127.0.0.1:{DEV_SINK_PORT}"
    for name in HTTP_DESTINATIONS:
        env.setdefault(f"DEST_{name.upper()}_URL", f"{sink}/{name}")
    env.setdefault("ALERT_SLACK_WEBHOOK_URL", f"{sink}/slack")
    env.setdefault("ALERT_DISCORD_WEBHOOK_URL", f"{sink}/discord")
    # Short retries so failures become dead letters (and alerts) within the minute.
    env.setdefault("MAX_ATTEMPTS", "3")
    env.setdefault("RETRY_BASE_S", "2")
    env.setdefault("RETRY_CAP_S", "8")
    env.setdefault("DASHBOARD_REFRESH_S", "3")
    env["DEMO_FAIL_RATE"] = str(fail_rate)
    return env


def run_demo(settings: Settings) -> int:
    embedded = not settings.database_url
    dsn, server = resolve_dsn(settings.database_url, settings.pgdata_dir)
    migrate(dsn, sql_dir(settings))
    key = dev_key(dsn, settings, embedded)
    fail_rate = float(os.environ.get("DEMO_FAIL_RATE", "0.3"))
    env = demo_env(dsn, fail_rate)
    port = settings.port
    children: list[tuple[str, subprocess.Popen[bytes]]] = [
        (
            "sink",
            _child(
                "carinho_outbox.devsink",
                env,
                "--port",
                str(DEV_SINK_PORT),
                "--fail-rate",
                str(fail_rate),
            ),
        ),
        ("web", _child("carinho_outbox.web.serve", env)),
        ("worker", _child("carinho_outbox.worker_cli", env)),
        ("scheduler", _child("carinho_outbox.scheduler", env)),
    ]
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_ready(f"{base}/health", WEB_READY_TIMEOUT_S):
            print("demo: the web process did not start", file=sys.stderr)
            stop_children(children, settings.shutdown_grace_s)
            return 1
        events = day_of_events(random.Random(7))
        print(
            "\n"
            f"  Carinho Hub demo is running.\n\n"
            f"  dashboard:  {base}/dashboard\n"
            f"  admin key:  {key}\n"
            f"  API docs:   {base}/docs   status: {base}/status   metrics: {base}/metrics\n\n"
            f"  posting {len(events)} events of a day over {POST_OVER_S:.0f} s; the local sink "
            f"fails {fail_rate:.0%} of deliveries with 503,\n"
            "  so you will see retries, dead letters (reprocess them from the dashboard) and\n"
            "  Slack/Discord alerts arriving at the sink. Ctrl-C stops everything.\n",
            flush=True,
        )
        poster = threading.Thread(
            target=post_day, args=(base, key, events, POST_OVER_S), daemon=True
        )
        poster.start()
    except BaseException:  # Ctrl-C while starting: stop what was started
        stop_children(children, settings.shutdown_grace_s)
        raise
    try:
        return supervise(children, settings.shutdown_grace_s)
    finally:
        del server  # the embedded server stops with its last handle


def main() -> None:
    sys.exit(run_demo(load_settings()))


if __name__ == "__main__":
    main()
