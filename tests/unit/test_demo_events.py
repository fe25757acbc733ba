"""The demo's day of events is valid input: every payload passes the event type's model and
every source may emit its type (so `make demo` shows deliveries, not 422s)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from carinho_outbox.demo import day_of_events
from carinho_outbox.payloads import validate_payload

# DESIGN.md §4 (plus the hub's own de-duplication source for lead.updated).
SOURCES = {
    "lead.created": {"site", "whatsapp"},
    "client.registered": {"crm"},
    "service.scheduled": {"crm"},
    "service.started": {"operacao"},
    "service.completed": {"operacao"},
    "service.cancelled": {"operacao"},
    "payment.received": {"financeiro"},
    "payment.failed": {"financeiro"},
    "invoice.created": {"financeiro"},
    "payout.processed": {"financeiro"},
    "whatsapp.inbound": {"zapi"},
    "feedback.received": {"operacao", "whatsapp"},
}


def test_day_of_events_is_valid_and_varied() -> None:
    now = datetime.now(UTC)
    events = day_of_events(random.Random(7), now=now)
    assert len(events) > 300
    assert {e["type"] for e in events} == set(SOURCES)
    for e in events:
        validate_payload(e["type"], e["payload"])  # raises on any invalid payload
        assert e["source"] in SOURCES[e["type"]], e
    keys = [e["idempotency_key"] for e in events]
    assert len(set(keys)) == len(keys)
    assert day_of_events(random.Random(7), now=now)[5]["payload"] == events[5]["payload"]
