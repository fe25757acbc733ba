"""A valid payload for every event type of the catalog, and the destinations each must reach
(DESIGN.md §4, written out by hand so a routing mistake in sql/ fails a test)."""

from __future__ import annotations

from typing import Any

EXPECTED_DESTINATIONS: dict[str, set[str]] = {
    "lead.created": {"crm", "marketing"},
    "lead.updated": {"crm"},
    "client.registered": {"crm", "financeiro", "marketing"},
    "client.updated": {"crm", "operacao"},
    "service.scheduled": {"crm", "operacao", "cuidadores", "financeiro"},
    "service.started": {"crm", "operacao"},
    "service.completed": {"crm", "financeiro", "cuidadores"},
    "service.cancelled": {"crm", "operacao", "financeiro"},
    "payment.received": {"crm", "operacao"},
    "payment.failed": {"crm"},
    "invoice.created": {"crm"},
    "payout.processed": {"cuidadores"},
    "whatsapp.inbound": {"crm", "atendimento"},
    "feedback.received": {"crm", "cuidadores"},
}

# Automations add channel deliveries on top of the catalog's destinations (DESIGN.md §4).
CHANNEL_DESTINATIONS: dict[str, set[str]] = {
    "lead.created": {"whatsapp"},
    "client.registered": {"email", "whatsapp"},
    "service.completed": {"email", "whatsapp"},
}


def all_destinations(event_type: str) -> set[str]:
    return EXPECTED_DESTINATIONS[event_type] | CHANNEL_DESTINATIONS.get(event_type, set())


SOURCE_FOR: dict[str, str] = {
    "lead.created": "site",
    "lead.updated": "crm",
    "client.registered": "crm",
    "client.updated": "crm",
    "service.scheduled": "crm",
    "service.started": "operacao",
    "service.completed": "operacao",
    "service.cancelled": "operacao",
    "payment.received": "financeiro",
    "payment.failed": "financeiro",
    "invoice.created": "financeiro",
    "payout.processed": "financeiro",
    "whatsapp.inbound": "zapi",
    "feedback.received": "operacao",
}

PAYLOADS: dict[str, dict[str, Any]] = {
    "lead.created": {"name": "Maria Souza", "phone": "+5541999998888", "utm_source": "google"},
    "lead.updated": {"phone": "+5541999998888", "changes": {"message": "quero orçamento"}},
    "client.registered": {"client_id": "c-1", "name": "Maria Souza", "email": "maria@example.com"},
    "client.updated": {"client_id": "c-1", "changes": {"address": "Rua A, 1"}},
    "service.scheduled": {
        "service_id": "s-1",
        "client_id": "c-1",
        "starts_at": "2026-12-01T08:00:00-03:00",
        "ends_at": "2026-12-01T20:00:00-03:00",
        "caregiver_id": "cg-1",
    },
    "service.started": {"service_id": "s-1", "started_at": "2026-12-01T08:02:00-03:00"},
    "service.completed": {
        "service_id": "s-1",
        "client_id": "c-1",
        "caregiver_id": "cg-1",
        "completed_at": "2026-12-01T20:00:00-03:00",
    },
    "service.cancelled": {"service_id": "s-2", "cancelled_at": "2026-12-01T07:00:00-03:00"},
    "payment.received": {
        "payment_id": "p-1",
        "invoice_id": "i-1",
        "client_id": "c-1",
        "amount_cents": 150000,
        "paid_at": "2026-12-02T10:00:00-03:00",
    },
    "payment.failed": {
        "payment_id": "p-2",
        "invoice_id": "i-1",
        "client_id": "c-1",
        "reason": "cartão recusado",
    },
    "invoice.created": {
        "invoice_id": "i-1",
        "client_id": "c-1",
        "amount_cents": 150000,
        "due_date": "2026-12-10",
    },
    "payout.processed": {
        "payout_id": "po-1",
        "caregiver_id": "cg-1",
        "amount_cents": 90000,
        "period": "2026-11",
    },
    "whatsapp.inbound": {"phone": "+5541999998888", "message_id": "3EB0X", "text": "Olá"},
    "feedback.received": {"service_id": "s-1", "rating": 5, "comment": "Ótima cuidadora"},
}
