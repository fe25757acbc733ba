"""Invoice lines and payouts, hand-computed (rates as seeded by sql/0009)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from carinho_outbox.billing import (
    BillingError,
    Rates,
    bill_service,
    easter,
    half_up,
    invoice_document,
    national_holidays,
    split_minutes,
)

TZ = ZoneInfo("America/Sao_Paulo")
# The seed of sql/0009: R$ 40,00/h; night +20 %, weekend +30 %, holiday +100 %, extra hour
# +50 %; payout 60 %; extras R$ 60,00 and R$ 25,00.
SEED = [
    {"code": "hourly", "kind": "cents_per_hour", "value": 4000, "description": "Hora"},
    {"code": "night", "kind": "percent_bp", "value": 2000, "description": "Noturno"},
    {"code": "weekend", "kind": "percent_bp", "value": 3000, "description": "Fim de semana"},
    {"code": "holiday", "kind": "percent_bp", "value": 10000, "description": "Feriado"},
    {"code": "extra_hour", "kind": "percent_bp", "value": 5000, "description": "Hora extra"},
    {"code": "payout", "kind": "percent_bp", "value": 6000, "description": "Repasse"},
    {"code": "extra:acompanhamento_consulta", "kind": "cents_per_unit", "value": 6000,
     "description": "Acompanhamento em consulta"},
    {"code": "extra:curativo", "kind": "cents_per_unit", "value": 2500,
     "description": "Curativo simples"},
]  # fmt: skip
RATES = Rates.from_rows(SEED)
HOLIDAYS = set(national_holidays(2025))


def svc(sid: str, start: str, end: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "client_id": kw.pop("client_id", "c-1"),
        "caregiver_id": kw.pop("caregiver_id", "cg-1"),
        "started_at": start,
        "ended_at": end,
        "scheduled_start": kw.pop("scheduled_start", start),
        "scheduled_end": kw.pop("scheduled_end", end),
        "completed_at": end,
        **kw,
    }


# The week of 17-23 Nov 2025: Thursday the 20th is a national holiday (Consciência Negra,
# Lei 14.759/2023) and the 23rd a Sunday.
WEEK = [
    # Monday day shift, 12 h: 720 min x R$40/h = R$480,00.
    svc("s1", "2025-11-17T08:00:00-03:00", "2025-11-17T20:00:00-03:00"),
    # Tuesday→Wednesday night shift, 12 h with 8 h between 22:00 and 06:00:
    # R$480,00 + 8 h x R$40 x 20 % = R$64,00.
    svc("s2", "2025-11-18T20:00:00-03:00", "2025-11-19T08:00:00-03:00"),
    # Holiday, 6 h, another caregiver, one consultation: R$240 + R$240 (100 %) + R$60.
    svc("s3", "2025-11-20T08:00:00-03:00", "2025-11-20T14:00:00-03:00", caregiver_id="cg-2",
        extras=[{"code": "acompanhamento_consulta", "quantity": 1}]),
    # Sunday, scheduled 8 h, worked 10 h 30: R$420 + weekend 10.5 h x R$12 = R$126 +
    # extra 2.5 h x R$20 = R$50 + two dressings R$50.
    svc("s4", "2025-11-23T08:00:00-03:00", "2025-11-23T18:30:00-03:00",
        scheduled_end="2025-11-23T16:00:00-03:00", extras=[{"code": "curativo", "quantity": 2}]),
    # Saturday 21:53-23:00 (67 min): 67 x 4000 / 60 = 4466.67 → 4467; night 60 min → 800;
    # weekend 67 min x R$12/h → 1340.
    svc("s5", "2025-11-22T21:53:00-03:00", "2025-11-22T23:00:00-03:00"),
]  # fmt: skip
EXPECTED = {
    # service: (lines {code: amount_cents}, total, payout = 60 % half up)
    "s1": ({"hours": 48000}, 48000, 28800),
    "s2": ({"hours": 48000, "night": 6400}, 54400, 32640),
    "s3": ({"hours": 24000, "holiday": 24000, "extra:acompanhamento_consulta": 6000}, 54000, 32400),
    "s4": ({"hours": 42000, "weekend": 12600, "extra_hour": 5000, "extra:curativo": 5000},
           64600, 38760),
    "s5": ({"hours": 4467, "night": 800, "weekend": 1340}, 6607, 3964),
}  # fmt: skip


@pytest.mark.parametrize("service", WEEK, ids=[s["id"] for s in WEEK])
def test_each_service_of_the_week_is_billed_as_computed_by_hand(service: dict[str, Any]) -> None:
    billed = bill_service(service, RATES, TZ, HOLIDAYS)
    lines, total, payout = EXPECTED[service["id"]]
    assert {line["code"]: line["amount_cents"] for line in billed.lines} == lines
    assert billed.amount_cents == total
    assert billed.payout_cents == payout
    assert billed.period == "2025-11"
    assert all(isinstance(line["amount_cents"], int) for line in billed.lines)


def test_the_week_adds_up_to_one_invoice_with_payouts_per_caregiver() -> None:
    rows = []
    for s in WEEK:
        b = bill_service(s, RATES, TZ, HOLIDAYS)
        rows.append(
            {
                "service_id": b.service_id,
                "caregiver_id": b.caregiver_id,
                "started_at": b.started_at,
                "ended_at": b.ended_at,
                "lines": b.lines,
                "amount_cents": b.amount_cents,
                "payout_cents": b.payout_cents,
            }
        )
    doc = invoice_document(external_key="k", client_id="c-1", period="2025-11", services=rows)
    # 480 + 544 + 540 + 646 + 66.07 = R$ 2.276,07
    assert doc["total_cents"] == 227607
    assert doc["payout_total_cents"] == 28800 + 32640 + 32400 + 38760 + 3964 == 136564
    assert doc["payouts"] == [
        {"caregiver_id": "cg-1", "amount_cents": 104164, "service_ids": ["s1", "s2", "s4", "s5"]},
        {"caregiver_id": "cg-2", "amount_cents": 32400, "service_ids": ["s3"]},
    ]
    assert sum(line["amount_cents"] for line in doc["lines"]) == doc["total_cents"]


def test_night_line_details_and_minutes() -> None:
    billed = bill_service(WEEK[1], RATES, TZ, HOLIDAYS)
    night = next(line for line in billed.lines if line["code"] == "night")
    assert night == {
        "service_id": "s2",
        "code": "night",
        "description": "Adicional noturno",
        "quantity": 480,
        "unit": "minutes",
        "amount_cents": 6400,
        "unit_cents": 4000,
        "rate_bp": 2000,
    }


def test_a_holiday_on_a_sunday_is_a_holiday_not_a_weekend() -> None:
    # 2025-12-07 is a Sunday; make it a (municipal) holiday.
    minutes = split_minutes(
        datetime.fromisoformat("2025-12-07T10:00:00-03:00"),
        datetime.fromisoformat("2025-12-07T12:00:00-03:00"),
        TZ,
        HOLIDAYS | {date(2025, 12, 7)},
    )
    assert minutes == {"total": 120, "night": 0, "weekend": 0, "holiday": 120}


def test_offsets_are_converted_to_the_billing_zone() -> None:
    # 01:00Z is 22:00 in São Paulo: the whole hour is night.
    billed = bill_service(
        svc("z", "2025-11-18T01:00:00+00:00", "2025-11-18T02:00:00+00:00"), RATES, TZ, HOLIDAYS
    )
    assert {line["code"]: line["quantity"] for line in billed.lines} == {"hours": 60, "night": 60}
    assert billed.period == "2025-11"


def test_holidays_and_easter() -> None:
    assert easter(2025) == date(2025, 4, 20)
    assert easter(2024) == date(2024, 3, 31)
    days = national_holidays(2025)
    assert date(2025, 4, 18) in days  # Good Friday
    assert date(2025, 11, 20) in days
    assert date(2023, 11, 20) not in national_holidays(2023)
    assert len(days) == 10


def test_half_up_rounding() -> None:
    assert half_up(5, 2) == 3
    assert half_up(4, 3) == 1
    assert half_up(5, 3) == 2
    assert half_up(0, 7) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"started_at": None, "scheduled_start": None}, "started_at is missing"),
        ({"ended_at": "2025-11-17T07:00:00-03:00", "scheduled_end": None}, "must be after"),
        ({"extras": [{"code": "massagem", "quantity": 1}]}, "has no rate"),
        ({"extras": [{"code": "curativo", "quantity": 1.5}]}, "positive integer"),
        ({"started_at": "2025-11-17T08:00:00"}, "no UTC offset"),
    ],
)
def test_unbillable_services_are_refused_with_a_reason(
    change: dict[str, Any], message: str
) -> None:
    service = {**WEEK[0], **change}
    with pytest.raises(BillingError, match=message):
        bill_service(service, RATES, TZ, HOLIDAYS)


def test_missing_rate_is_an_error() -> None:
    with pytest.raises(BillingError, match="night"):
        Rates.from_rows([r for r in SEED if r["code"] != "night"])
