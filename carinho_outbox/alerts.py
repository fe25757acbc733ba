"""The alerts job: evaluates the alert rules once a minute and raises alerts *through the
outbox* (an `alert.raised` event delivered to Slack and/or Discord like any delivery).

Rules:
- `dead_letters`: deliveries that died in the job's minute (count and top errors). The
  incident is resolved after ALERT_DLQ_QUIET_S without a new dead letter.
- `pending_age`: the oldest due delivery of a configured destination waits longer than
  ALERT_PENDING_AGE_S.
- `workers`: a queue of WORKER_QUEUES has no live worker (by heartbeat). When no worker at
  all is alive this job cannot run either (a worker runs it): that case belongs to an outside
  monitor, e.g. the `CarinhoNoLiveWorker` Prometheus rule in deploy/prometheus-alerts.yml.

Each rule has a row in `alert_state`: a rule fires once per incident, repeats only after
ALERT_COOLDOWN_S while the incident lasts, and sends "resolved" when it ends. Windows come
from the job's slot (the minute the scheduler enqueued it), so a run that is late or retried
looks at the same minute; the alert event's idempotency key carries the slot too, so a retried
run never sends twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)

WINDOW_S = 60.0
TOP_ERRORS = 3
SINKS = ("slack", "discord")


@dataclass
class Notice:
    rule: str
    state: str  # firing | repeat | resolved
    title: str
    text: str
    details: dict[str, Any] = field(default_factory=dict)


def fmt_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min"


def plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def sinks(settings: Settings) -> list[str]:
    urls = {
        "slack": settings.alert_slack_webhook_url,
        "discord": settings.alert_discord_webhook_url,
    }
    return [name for name in SINKS if urls[name] is not None and urls[name].get_secret_value()]


def _slot(payload: dict[str, Any]) -> datetime:
    raw = payload.get("slot")
    if isinstance(raw, str):
        try:
            at = datetime.fromisoformat(raw)
            if at.tzinfo is not None:
                return at
        except ValueError:
            pass
    return datetime.now(UTC).replace(second=0, microsecond=0)


def configured_destinations(settings: Settings) -> set[str]:
    """The destinations a worker with these settings can deliver to: the registry's answer.
    Adapters only keep references to the client and the store; nothing is sent or queried."""
    # Imported here: the registry builds the job runners, this module among them.
    from .registry import build_adapters

    return set(build_adapters(settings, httpx.AsyncClient(), None))  # type: ignore[arg-type]


class Evaluator:
    def __init__(self, store: Store, settings: Settings, slot: datetime, now: datetime) -> None:
        self.store = store
        self.settings = settings
        self.slot = slot
        self.now = now
        self.cooldown = timedelta(seconds=settings.alert_cooldown_s)

    def _repeat_due(self, state: dict[str, Any]) -> bool:
        last = state.get("last_sent_at")
        return last is None or self.now - last >= self.cooldown

    async def _save(
        self,
        rule: str,
        *,
        firing: bool,
        since: datetime | None,
        sent: datetime | None,
        details: dict[str, Any],
    ) -> None:
        await self.store.alert_state_save(
            key=rule, firing=firing, since=since, last_sent_at=sent, details=details
        )

    async def dead_letters(self, state: dict[str, Any]) -> Notice | None:
        start = self.slot - timedelta(seconds=WINDOW_S)
        details = dict(state.get("details") or {})
        firing = bool(state.get("firing"))
        done = details.get("evaluated_slot")
        if isinstance(done, str) and datetime.fromisoformat(done) >= self.slot:
            return None  # this minute was already counted (a retried or late run)
        count = await self.store.alert_dead_count(since=start, until=self.slot)
        if count:
            details["evaluated_slot"] = self.slot.isoformat()
            top = await self.store.dlq_top_errors(since=start, until=self.slot, limit=TOP_ERRORS)
            lines = "\n".join(f"• {t['error']} ({t['count']})" for t in top)
            details["total"] = int(details.get("total", 0)) + count
            details["unsent"] = int(details.get("unsent", 0)) + count
            details["last_dead_slot"] = self.slot.isoformat()
            notice: Notice | None = None
            if not firing:
                notice = Notice(
                    "dead_letters",
                    "firing",
                    f"{count} {plural(count, 'nova entrega', 'novas entregas')} na DLQ "
                    "no último minuto",
                    f"Principais erros:\n{lines}\nVeja: carinho-outbox dlq list",
                    {"count": count, "top_errors": top},
                )
                since: datetime | None = self.slot
            else:
                since = state.get("since")
                if self._repeat_due(state):
                    unsent = details["unsent"]
                    notice = Notice(
                        "dead_letters",
                        "repeat",
                        f"A DLQ continua crescendo: {unsent} "
                        f"{plural(unsent, 'entrega', 'entregas')} desde o último aviso",
                        f"Último minuto:\n{lines}\nVeja: carinho-outbox dlq list",
                        {"count": unsent, "top_errors": top},
                    )
            sent = self.now if notice else state.get("last_sent_at")
            if notice:
                details["unsent"] = 0
            await self._save("dead_letters", firing=True, since=since, sent=sent, details=details)
            return notice
        if not firing:
            return None
        last = details.get("last_dead_slot")
        last_slot = datetime.fromisoformat(last) if isinstance(last, str) else self.slot
        quiet = (self.slot - last_slot).total_seconds()
        if quiet < self.settings.alert_dlq_quiet_s:
            return None
        total = int(details.get("total", 0))
        since = state.get("since") or self.slot
        notice = Notice(
            "dead_letters",
            "resolved",
            f"DLQ sem entregas novas há {fmt_age(quiet)}",
            f"Incidente desde {since.astimezone(UTC):%d/%m %H:%M} UTC: {total} "
            f"{plural(total, 'entrega', 'entregas')} na DLQ no total.",
            {"total": total},
        )
        await self._save("dead_letters", firing=False, since=None, sent=self.now, details={})
        return notice

    async def pending_age(self, state: dict[str, Any], configured: set[str]) -> Notice | None:
        limit_s = self.settings.alert_pending_age_s
        rows = await self.store.ops_destinations(destinations=sorted(configured))
        late = []
        for r in rows:
            if r["destination"] in configured and r["oldest_due"] is not None:
                age = (self.now - r["oldest_due"]).total_seconds()
                if age > limit_s:
                    late.append((age, r["destination"], r["pending"]))
        late.sort(reverse=True)
        return await self._condition(
            "pending_age",
            state,
            bool(late),
            firing=lambda: Notice(
                "pending_age",
                "firing",
                f"Entregas atrasadas: a mais antiga espera há {fmt_age(late[0][0])}",
                f"Limite: {fmt_age(limit_s)}\n"
                + "\n".join(
                    f"• {d}: {fmt_age(a)} ({n} {plural(n, 'pendente', 'pendentes')})"
                    for a, d, n in late
                ),
                {"oldest_age_s": round(late[0][0], 1), "destinations": [d for _, d, _ in late]},
            ),
            resolved=lambda: Notice(
                "pending_age",
                "resolved",
                "Entregas em dia novamente",
                f"Nenhuma entrega pendente há mais de {fmt_age(limit_s)}.",
            ),
        )

    async def workers(self, state: dict[str, Any]) -> Notice | None:
        live = await self.store.alert_live_queues(alive_within_s=self.settings.worker_dead_after_s)
        expected = self.settings.queues
        missing = [q for q in expected if q not in live]
        return await self._condition(
            "workers",
            state,
            bool(missing),
            firing=lambda: Notice(
                "workers",
                "firing",
                f"Nenhum worker ativo para: {', '.join(missing)}",
                f"Sem heartbeat há mais de {fmt_age(self.settings.worker_dead_after_s)}: "
                "as entregas dessas filas estão paradas.",
                {"missing_queues": missing},
            ),
            resolved=lambda: Notice(
                "workers",
                "resolved",
                "Workers de volta em todas as filas",
                f"Filas atendidas: {', '.join(expected)}.",
            ),
        )

    async def circuits(self, state: dict[str, Any]) -> Notice | None:
        """A destination whose circuit breaker opened (paused after consecutive failures)."""
        rows = await self.store.destination_states()
        opened = [r for r in rows if r["state"] != "closed"]
        return await self._condition(
            "circuits",
            state,
            bool(opened),
            firing=lambda: Notice(
                "circuits",
                "firing",
                "Circuito aberto: " + ", ".join(r["destination"] for r in opened),
                "\n".join(
                    f"• {r['destination']}: {r['consecutive_failures']} falhas seguidas; "
                    f"último erro: {r['last_error'] or '-'}"
                    for r in opened
                )
                + "\nAs entregas desses destinos aguardam, sem gastar tentativas.",
                {"destinations": [r["destination"] for r in opened]},
            ),
            resolved=lambda: Notice(
                "circuits",
                "resolved",
                "Circuitos fechados novamente",
                "Todos os destinos voltaram a responder.",
            ),
        )

    async def _condition(
        self, rule: str, state: dict[str, Any], bad: bool, *, firing: Any, resolved: Any
    ) -> Notice | None:
        """A plain condition: fire when it turns bad, repeat after the cooldown, resolve."""
        was = bool(state.get("firing"))
        if bad:
            if not was:
                notice: Notice = firing()
                since: datetime | None = self.now
            elif self._repeat_due(state):
                notice = firing()
                notice.state = "repeat"
                since = state.get("since")
            else:
                return None
            await self._save(rule, firing=True, since=since, sent=self.now, details=notice.details)
            return notice
        if was:
            await self._save(rule, firing=False, since=None, sent=self.now, details={})
            return resolved()
        return None


async def evaluate(
    store: Store,
    settings: Settings,
    slot: datetime,
    configured: set[str],
    now: datetime | None = None,
) -> list[Notice]:
    states = await store.alert_states()
    ev = Evaluator(store, settings, slot, now or datetime.now(UTC))
    notices = [
        await ev.dead_letters(states.get("dead_letters", {})),
        await ev.pending_age(states.get("pending_age", {}), configured),
        await ev.workers(states.get("workers", {})),
        await ev.circuits(states.get("circuits", {})),
    ]
    return [n for n in notices if n is not None]


async def raise_notices(
    store: Store, settings: Settings, slot: datetime, notices: list[Notice]
) -> list[str]:
    """Enqueue one alert.raised event per notice for the configured sinks."""
    targets = sinks(settings)
    raised: list[str] = []
    for notice in notices:
        payload = {
            "alert": notice.rule,
            "state": notice.state,
            "title": notice.title,
            "text": notice.text,
            "hub": settings.alert_hub_name,
            "slot": slot.astimezone(UTC).isoformat(),
            "details": notice.details,
        }
        log.warning(
            "alert %s %s: %s",
            notice.rule,
            notice.state,
            notice.title,
            extra={"action": "alert_raised", "alert": notice.rule, "state": notice.state},
        )
        if not targets:
            continue
        key = f"{notice.rule}:{notice.state}@{slot.astimezone(UTC).isoformat()}"
        event_id, _ = await store.alert_enqueue(
            payload=payload, idempotency_key=key, destinations=targets
        )
        if event_id is not None:
            raised.append(str(event_id))
    return raised


async def run(store: Store, settings: Settings, payload: dict[str, Any]) -> dict[str, Any]:
    """The `alerts` job runner (see jobs.py)."""
    slot = _slot(payload)
    notices = await evaluate(store, settings, slot, configured_destinations(settings))
    raised = await raise_notices(store, settings, slot, notices)
    return {
        "notices": [f"{n.rule}:{n.state}" for n in notices],
        "events": raised,
        "sinks": sinks(settings),
    }
