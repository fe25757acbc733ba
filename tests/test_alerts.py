"""Alerts through the outbox: the alerts job evaluates the rules, writes alert.raised events,
and workers deliver them to loopback receivers standing in for Slack and Discord."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from carinho_outbox import alerts
from carinho_outbox.scheduler import enqueue_slot, periodic_jobs
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, running_worker
from tests.support.ops import add_dead, add_delivery, add_event, add_live_worker
from tests.support.receiver import Receiver


def sink_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "ALERT_SLACK_WEBHOOK_URL": receiver.url("/slack"),
        "ALERT_DISCORD_WEBHOOK_URL": receiver.url("/discord"),
        **extra,
    }


def this_minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def kill_at(db: psycopg.Connection, delivery_id: int, at: datetime) -> None:
    db.execute(
        "update deliveries set dead_at = %s, finished_at = %s where id = %s",
        (at, at, delivery_id),
    )


def alert_events(db: psycopg.Connection) -> list[dict[str, Any]]:
    rows = db.execute(
        "select e.payload, array_agg(d.destination order by d.destination) from events e"
        " join deliveries d on d.event_id = e.id where e.type = 'alert.raised'"
        " group by e.id, e.received_at order by e.received_at, e.id"
    ).fetchall()
    return [{**payload, "sinks": sinks} for payload, sinks in rows]


async def test_alerts_job_runs_on_a_worker_and_slack_and_discord_get_the_exact_messages(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**sink_env(receiver))
    assert "alerts" in [p.name for p in periodic_jobs(settings)]
    slot = this_minute()
    for error, n in (("HTTP 400", 2), ("HTTP 404", 1)):
        for _ in range(n):
            kill_at(db, add_dead(db, "crm", error=error), slot - timedelta(seconds=20))
    # Died before the window: not in this minute's count.
    kill_at(db, add_dead(db, "crm", error="old"), slot - timedelta(seconds=200))
    assert await enqueue_slot(store, "alerts", slot)
    async with running_worker(settings, store, dsn):
        # The job runs, raises one alert, and its two deliveries reach the sinks.
        await asyncio.to_thread(receiver.wait_for, 2)
        await eventually(
            lambda: (
                db.execute(
                    "select count(*) from deliveries where destination in ('slack', 'discord')"
                    " and status = 'delivered'"
                ).fetchone()
                == (2,)
            )
        )
    by_path = {r.path: r for r in receiver.requests}
    title = "🔴 [carinho-hub] 3 novas entregas na DLQ no último minuto"
    text = "Principais erros:\n• HTTP 400 (2)\n• HTTP 404 (1)\nVeja: carinho-outbox dlq list"
    assert by_path["/slack"].json == {"text": f"*{title}*\n{text}"}
    assert by_path["/discord"].json == {
        "content": f"**{title}**\n{text}",
        "username": "Carinho Hub",
        "allowed_mentions": {"parse": []},
    }
    assert "webhook-signature" not in by_path["/slack"].headers
    job = db.execute(
        "select d.status, d.last_response from deliveries d join events e on e.id = d.event_id"
        " where e.type = 'job.alerts'"
    ).fetchone()
    assert job is not None and job[0] == "delivered"


async def test_dead_letter_incident_fires_once_then_resolves(
    store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    add_live_worker(db)
    settings = make_settings(**sink_env(receiver, ALERT_DLQ_QUIET_S="120"))
    slot = this_minute()
    kill_at(db, add_dead(db), slot - timedelta(seconds=10))
    kill_at(db, add_dead(db), slot - timedelta(seconds=20))
    await alerts.run(store, settings, {"slot": slot.isoformat()})
    # The same minute again (a retried run): nothing new.
    await alerts.run(store, settings, {"slot": slot.isoformat()})
    nxt = slot + timedelta(minutes=1)
    kill_at(db, add_dead(db, error="HTTP 500"), nxt - timedelta(seconds=5))
    await alerts.run(store, settings, {"slot": nxt.isoformat()})  # within the cooldown
    await alerts.run(store, settings, {"slot": (nxt + timedelta(minutes=1)).isoformat()})
    await alerts.run(store, settings, {"slot": (nxt + timedelta(minutes=2)).isoformat()})
    got = alert_events(db)
    assert [(e["alert"], e["state"]) for e in got] == [
        ("dead_letters", "firing"),
        ("dead_letters", "resolved"),
    ]
    assert got[0]["title"] == "2 novas entregas na DLQ no último minuto"
    assert got[0]["sinks"] == ["discord", "slack"]
    assert got[1]["title"] == "DLQ sem entregas novas há 2 min"
    assert got[1]["text"] == (
        f"Incidente desde {slot:%d/%m %H:%M} UTC: 3 entregas na DLQ no total."
    )
    state = db.execute("select firing from alert_state where key = 'dead_letters'").fetchone()
    assert state == (False,)


async def test_dead_letter_alert_repeats_after_the_cooldown(
    store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    add_live_worker(db)
    settings = make_settings(**sink_env(receiver, ALERT_COOLDOWN_S="0"))
    slot = this_minute()
    kill_at(db, add_dead(db), slot - timedelta(seconds=10))
    await alerts.run(store, settings, {"slot": slot.isoformat()})
    nxt = slot + timedelta(minutes=1)
    kill_at(db, add_dead(db), nxt - timedelta(seconds=10))
    kill_at(db, add_dead(db), nxt - timedelta(seconds=11))
    await alerts.run(store, settings, {"slot": nxt.isoformat()})
    got = alert_events(db)
    assert [(e["state"], e["title"]) for e in got] == [
        ("firing", "1 nova entrega na DLQ no último minuto"),
        ("repeat", "A DLQ continua crescendo: 2 entregas desde o último aviso"),
    ]


async def test_pending_age_fires_for_configured_destinations_and_resolves(
    store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    add_live_worker(db)
    settings = make_settings(
        **sink_env(receiver, ALERT_PENDING_AGE_S="600", DEST_CRM_URL="http://127.0.0.1:9/crm")
    )
    ev = add_event(db)
    late = add_delivery(db, ev, "crm", "pending", due_in_s=-1230)
    add_delivery(db, ev, "marketing", "pending", due_in_s=-99999)  # unconfigured: held
    await alerts.run(store, settings, {"slot": this_minute().isoformat()})
    db.execute(
        "update deliveries set status = 'delivered', finished_at = now() where id = %s", (late,)
    )
    await alerts.run(store, settings, {"slot": (this_minute() + timedelta(minutes=1)).isoformat()})
    got = alert_events(db)
    assert [(e["alert"], e["state"]) for e in got] == [
        ("pending_age", "firing"),
        ("pending_age", "resolved"),
    ]
    assert got[0]["title"] == "Entregas atrasadas: a mais antiga espera há 20 min"
    assert got[0]["text"] == "Limite: 10 min\n• crm: 20 min (1 pendente)"
    assert got[1]["text"] == "Nenhuma entrega pendente há mais de 10 min."


async def test_queue_without_a_live_worker_fires_and_resolves(
    store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**sink_env(receiver))
    add_live_worker(db, "w-critical", "{critical}")
    slot = this_minute()
    await alerts.run(store, settings, {"slot": slot.isoformat()})
    # Still broken a minute later: no second message within the cooldown.
    await alerts.run(store, settings, {"slot": (slot + timedelta(minutes=1)).isoformat()})
    add_live_worker(db, "w-rest", "{default,low}")
    await alerts.run(store, settings, {"slot": (slot + timedelta(minutes=2)).isoformat()})
    got = alert_events(db)
    assert [(e["state"], e["title"], e["text"]) for e in got] == [
        (
            "firing",
            "Nenhum worker ativo para: default, low",
            "Sem heartbeat há mais de 30 s: as entregas dessas filas estão paradas.",
        ),
        (
            "resolved",
            "Workers de volta em todas as filas",
            "Filas atendidas: critical, default, low.",
        ),
    ]


async def test_without_sinks_state_is_kept_and_nothing_is_enqueued(
    store: Store, db: psycopg.Connection
) -> None:
    settings = make_settings()
    result = await alerts.run(store, settings, {"slot": this_minute().isoformat()})
    assert result["notices"] == ["workers:firing"] and result["sinks"] == []
    assert alert_events(db) == []
    assert db.execute("select firing from alert_state where key = 'workers'").fetchone() == (True,)


async def test_only_configured_sinks_get_a_delivery(
    store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(ALERT_DISCORD_WEBHOOK_URL=receiver.url("/discord"))
    await alerts.run(store, settings, {"slot": this_minute().isoformat()})
    assert [e["sinks"] for e in alert_events(db)] == [["discord"]]


async def test_circuit_opening_fires_once_and_resolves(
    store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    settings = make_settings(**sink_env(receiver))
    add_live_worker(db, "w-all", "{critical,default,low}")
    db.execute(
        "insert into destination_state (destination, state, consecutive_failures, paused_until,"
        " last_error) values ('crm', 'open', 5, now() + interval '30 seconds', 'HTTP 503'),"
        " ('operacao', 'closed', 0, null, null)"
    )
    slot = this_minute()
    await alerts.run(store, settings, {"slot": slot.isoformat()})
    await alerts.run(store, settings, {"slot": (slot + timedelta(minutes=1)).isoformat()})
    db.execute("update destination_state set state = 'closed', paused_until = null")
    await alerts.run(store, settings, {"slot": (slot + timedelta(minutes=2)).isoformat()})
    got = [e for e in alert_events(db) if e["alert"] == "circuits"]
    assert [(e["state"], e["title"], e["text"], e["sinks"]) for e in got] == [
        (
            "firing",
            "Circuito aberto: crm",
            "• crm: 5 falhas seguidas; último erro: HTTP 503\n"
            "As entregas desses destinos aguardam, sem gastar tentativas.",
            ["discord", "slack"],
        ),
        (
            "resolved",
            "Circuitos fechados novamente",
            "Todos os destinos voltaram a responder.",
            ["discord", "slack"],
        ),
    ]
