"""The pure lead planners (carinho_outbox.leads): matching, changes, touches."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from carinho_outbox.leads import (
    LeadMatch,
    lock_keys,
    pick_lead,
    plan_site_lead,
    plan_whatsapp_inbound,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LEAD_ID = UUID("00000000-0000-4000-8000-000000000001")


def row(id: int, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": id, "lead_id": UUID(int=id), "name": "Old", "phone": None, "phone_raw": None,
        "whatsapp_lid": None, "email": None, "consent": True, "source": "site",
        "first_touch": {"channel": "site", "utm_source": "google"},
        "last_touch": {"channel": "site", "utm_source": "google"}, "touches": 1,
    }
    return {**base, **values}


def test_phone_beats_email_beats_raw_id_and_the_oldest_wins_a_tie() -> None:
    by_raw = row(1, phone_raw="123@lid")
    by_email = row(2, email="a@b.com")
    by_phone = row(3, phone="+5511987654321")
    match = LeadMatch(phone="+5511987654321", email="a@b.com", raw_ids=("123@lid",))
    primary, others = pick_lead([by_raw, by_email, by_phone], match)
    assert primary is by_phone and others == [by_email, by_raw]
    assert pick_lead([row(9, email="a@b.com"), by_email], match)[0] is by_email
    assert pick_lead([], match) == (None, [])


def test_lock_keys_are_sorted_and_name_every_identity() -> None:
    keys = lock_keys(LeadMatch("+5511987654321", "a@b.com", ("x@lid",)), ("site", "m1"))
    assert keys == ["email:a@b.com", "idem:site:m1", "phone:+5511987654321", "raw:x@lid"]


def test_new_site_lead_is_created_with_its_touch() -> None:
    form = {"name": "Ana", "phone": "+5511987654321", "utm_source": "google", "consent": True}
    plan = plan_site_lead(form, [], idempotency_key="m1", now=NOW, new_lead_id=lambda: LEAD_ID)
    (event,) = plan.events
    assert (event.type, event.source, event.idempotency_key) == ("lead.created", "site", "m1")
    assert event.payload["lead_id"] == str(LEAD_ID)
    assert plan.insert is not None and plan.update is None
    assert plan.insert.first_touch == plan.insert.last_touch == {
        "at": NOW.isoformat(), "channel": "site", "utm_source": "google",
    }


def test_known_site_lead_reports_only_what_changed_and_keeps_its_contacts() -> None:
    known = row(7, phone="+5511987654321", email="old@x.com")
    form = {"name": "Ana", "phone": "+5511987654321", "email": "new@x.com",
            "utm_campaign": "inverno", "consent": False, "campo_extra": 1}
    plan = plan_site_lead(form, [known], idempotency_key="m2", now=NOW)
    (event,) = plan.events
    assert event.type == "lead.updated"
    assert event.payload["changes"] == {
        "name": "Ana", "email": "new@x.com", "consent": False, "campo_extra": 1,
        "last_touch": {"at": NOW.isoformat(), "channel": "site", "utm_campaign": "inverno"},
    }
    assert plan.update is not None
    row_id, values = plan.update
    assert row_id == 7
    assert (values.email, values.consent, values.touches) == ("old@x.com", False, 2)
    assert values.first_touch == known["first_touch"]


def inbound(**extra: Any) -> dict[str, Any]:
    return {"phone": "+5544999999999", "phone_raw": "5544999999999", "message_id": "M1",
            "text": "oi", "sender_name": "Bia", **extra}


def test_whatsapp_known_lead_writes_nothing_unless_something_is_new() -> None:
    known = row(3, phone="+5544999999999", phone_raw="5544999999999", whatsapp_lid="9@lid")
    plan = plan_whatsapp_inbound(inbound(), [known], whatsapp_lid="9@lid", now=NOW)
    assert [e.type for e in plan.events] == ["whatsapp.inbound"]
    assert plan.update is None and plan.insert is None
    ad = {"source_id": "777", "ctwa_clid": "abc"}
    clicked = plan_whatsapp_inbound(inbound(ad=ad), [known], whatsapp_lid=None, now=NOW)
    assert clicked.update is not None
    assert clicked.update[1].last_touch == {"at": NOW.isoformat(), "channel": "whatsapp",
                                            "ad": ad}
    assert clicked.update[1].touches == 2


def test_whatsapp_unknown_phone_creates_a_lead_and_a_lid_alone_does_not() -> None:
    plan = plan_whatsapp_inbound(inbound(timestamp="2026-05-01T09:00:00-03:00"), [],
                                 whatsapp_lid=None, now=NOW)
    assert [(e.type, e.source) for e in plan.events] == [
        ("whatsapp.inbound", "zapi"), ("lead.created", "whatsapp"),
    ]
    assert plan.events[1].payload["name"] == "Bia"
    assert plan.events[0].occurred_at == datetime.fromisoformat("2026-05-01T12:00:00+00:00")
    anonymous = plan_whatsapp_inbound(inbound(phone=None, phone_raw="9@lid"), [],
                                      whatsapp_lid=None, now=NOW)
    assert [e.type for e in anonymous.events] == ["whatsapp.inbound"]
    assert anonymous.insert is None and anonymous.lead_id is None
