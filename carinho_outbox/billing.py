"""What a completed service costs: invoice lines and the caregiver's payout (repasse), in
integer cents. Pure: rates, holidays and the time zone are passed in.

Lines of one service (only those with a non-zero amount are kept):

- ``hours``      worked minutes * hourly rate / 60
- ``night``      minutes between 22:00 and 06:00 (local) * hourly * night bp
- ``weekend``    minutes on a Saturday or Sunday that is not a holiday * hourly * weekend bp
- ``holiday``    minutes on a national holiday (or a billing_holidays day) * hourly * holiday bp
- ``extra_hour`` minutes worked beyond the scheduled length * hourly * extra_hour bp
- ``extra:<code>`` quantity * unit price, for each extra service of the service

Add-ons are percentages of the base rate and stack additively (a Sunday night earns night +
weekend); a holiday replaces the weekend add-on rather than adding to it. Each line is
rounded once, half up, from exact integer arithmetic (minutes * cents * bp), so totals never
depend on float. The payout is the payout bp of the service total, rounded the same way.
Times are cut to the minute; the local calendar (BILLING_TZ) decides night, weekend, holiday.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

BP = 10_000  # basis points in 100 %
NIGHT_START = time(22, 0)
NIGHT_END = time(6, 0)
MAX_SERVICE_HOURS = 72  # a longer "service" is a data error upstream, not a shift

LINE_TEXT = {
    "hours": "Horas de cuidado",
    "night": "Adicional noturno",
    "weekend": "Adicional de fim de semana",
    "holiday": "Adicional de feriado",
    "extra_hour": "Adicional de hora extra",
}


class BillingError(ValueError):
    """The service cannot be billed as sent (missing times, unknown extra, no rate)."""


@dataclass(frozen=True, slots=True)
class Rates:
    hourly_cents: int
    night_bp: int
    weekend_bp: int
    holiday_bp: int
    extra_hour_bp: int
    payout_bp: int
    extras: dict[str, tuple[int, str]]  # code → (cents per unit, description)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> Rates:
        by_code = {r["code"]: r for r in rows}

        def value(code: str, kind: str) -> int:
            row = by_code.get(code)
            if row is None or row["kind"] != kind:
                raise BillingError(f"rate {code!r} ({kind}) is missing from the rates table")
            return int(row["value"])

        extras = {
            code.removeprefix("extra:"): (int(r["value"]), str(r.get("description") or code))
            for code, r in by_code.items()
            if code.startswith("extra:") and r["kind"] == "cents_per_unit"
        }
        return cls(
            hourly_cents=value("hourly", "cents_per_hour"),
            night_bp=value("night", "percent_bp"),
            weekend_bp=value("weekend", "percent_bp"),
            holiday_bp=value("holiday", "percent_bp"),
            extra_hour_bp=value("extra_hour", "percent_bp"),
            payout_bp=value("payout", "percent_bp"),
            extras=extras,
        )


@dataclass(frozen=True, slots=True)
class BilledService:
    service_id: str
    client_id: str
    caregiver_id: str | None
    period: str
    started_at: datetime
    ended_at: datetime
    lines: list[dict[str, Any]]
    amount_cents: int
    payout_cents: int


def half_up(numerator: int, denominator: int) -> int:
    """round(numerator / denominator), halves up, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return date(year, month, day + 1)


def national_holidays(year: int) -> dict[date, str]:
    """Brazil's national holidays (Lei 662/1949, 6.802/1980, 14.759/2023) and Good Friday.
    Carnival and Corpus Christi are optional days off, not holidays: add them (or municipal
    holidays) to billing_holidays where a contract treats them as such."""
    days = {
        date(year, 1, 1): "Confraternização Universal",
        easter(year) - timedelta(days=2): "Sexta-feira Santa",
        date(year, 4, 21): "Tiradentes",
        date(year, 5, 1): "Dia do Trabalho",
        date(year, 9, 7): "Independência do Brasil",
        date(year, 10, 12): "Nossa Senhora Aparecida",
        date(year, 11, 2): "Finados",
        date(year, 11, 15): "Proclamação da República",
        date(year, 12, 25): "Natal",
    }
    if year >= 2024:
        days[date(year, 11, 20)] = "Dia Nacional de Zumbi e da Consciência Negra"
    return days


def _is_night(moment: time) -> bool:
    return moment >= NIGHT_START or moment < NIGHT_END


def _next_boundary(local: datetime) -> datetime:
    """The next local instant at which night or the calendar day can change."""
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    for boundary in (
        day.replace(hour=NIGHT_END.hour),
        day.replace(hour=NIGHT_START.hour),
        day + timedelta(days=1),
    ):
        if boundary > local:
            return boundary
    raise AssertionError("unreachable: midnight of the next day is always later")


def split_minutes(
    start: datetime, end: datetime, tz: tzinfo, holidays: set[date]
) -> dict[str, int]:
    """Worked minutes by class: total, night, weekend (non-holiday), holiday."""
    out = {"total": 0, "night": 0, "weekend": 0, "holiday": 0}
    cursor = start.astimezone(tz).replace(second=0, microsecond=0, tzinfo=None)
    stop = end.astimezone(tz).replace(second=0, microsecond=0, tzinfo=None)
    # Wall-clock arithmetic in the local zone: Brazil has had no DST since 2019, and for older
    # dates an hour of DST would shift a boundary by an hour, never lose or invent minutes
    # beyond that hour.
    for _ in range(MAX_SERVICE_HOURS * 3 + 3):
        if cursor >= stop:
            break
        upto = min(_next_boundary(cursor), stop)
        minutes = int((upto - cursor).total_seconds()) // 60
        out["total"] += minutes
        if _is_night(cursor.time()):
            out["night"] += minutes
        if cursor.date() in holidays:
            out["holiday"] += minutes
        elif cursor.weekday() >= 5:
            out["weekend"] += minutes
        cursor = upto
    return out


def _parse_time(value: object, field: str) -> datetime:
    if not isinstance(value, str):
        raise BillingError(f"{field} is missing")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BillingError(f"{field} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise BillingError(f"{field} has no UTC offset")
    return moment


def bill_service(
    service: dict[str, Any], rates: Rates, tz: tzinfo, holidays: set[date]
) -> BilledService:
    """Lines, total and payout of one completed service as Operação sends it."""
    service_id = service.get("id") or service.get("service_id")
    client_id = service.get("client_id")
    if not service_id or not client_id:
        raise BillingError("id and client_id are required")
    start = _parse_time(service.get("started_at") or service.get("scheduled_start"), "started_at")
    end = _parse_time(service.get("ended_at") or service.get("scheduled_end"), "ended_at")
    if end <= start or end - start > timedelta(hours=MAX_SERVICE_HOURS):
        raise BillingError("ended_at must be after started_at and within 72 hours")
    minutes = split_minutes(start, end, tz, holidays)
    scheduled = minutes["total"]
    if service.get("scheduled_start") and service.get("scheduled_end"):
        s_start = _parse_time(service["scheduled_start"], "scheduled_start")
        s_end = _parse_time(service["scheduled_end"], "scheduled_end")
        scheduled = max(0, int((s_end - s_start).total_seconds()) // 60)
    extra_minutes = max(0, minutes["total"] - scheduled)
    hourly = rates.hourly_cents
    lines: list[dict[str, Any]] = []

    def add(code: str, quantity: int, unit: str, amount: int, **more: Any) -> None:
        if amount > 0:
            lines.append(
                {
                    "service_id": str(service_id),
                    "code": code,
                    "description": more.pop("description", LINE_TEXT.get(code, code)),
                    "quantity": quantity,
                    "unit": unit,
                    "amount_cents": amount,
                    **more,
                }
            )

    add(
        "hours",
        minutes["total"],
        "minutes",
        half_up(minutes["total"] * hourly, 60),
        unit_cents=hourly,
    )
    for code, bp in (
        ("night", rates.night_bp),
        ("weekend", rates.weekend_bp),
        ("holiday", rates.holiday_bp),
    ):
        add(
            code,
            minutes[code],
            "minutes",
            half_up(minutes[code] * hourly * bp, 60 * BP),
            unit_cents=hourly,
            rate_bp=bp,
        )
    add(
        "extra_hour",
        extra_minutes,
        "minutes",
        half_up(extra_minutes * hourly * rates.extra_hour_bp, 60 * BP),
        unit_cents=hourly,
        rate_bp=rates.extra_hour_bp,
    )
    for item in service.get("extras") or []:
        code = item.get("code") if isinstance(item, dict) else None
        quantity = item.get("quantity", 1) if isinstance(item, dict) else None
        if not isinstance(code, str) or code not in rates.extras:
            raise BillingError(f"extra service {code!r} has no rate (rates code extra:{code})")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or not 0 < quantity < 1000:
            raise BillingError(f"extra service {code!r}: quantity must be a positive integer")
        unit_cents, description = rates.extras[code]
        add(
            f"extra:{code}",
            quantity,
            "units",
            quantity * unit_cents,
            unit_cents=unit_cents,
            description=description,
        )
    amount = sum(line["amount_cents"] for line in lines)
    local_start = start.astimezone(tz)
    caregiver = service.get("caregiver_id")
    return BilledService(
        service_id=str(service_id),
        client_id=str(client_id),
        caregiver_id=str(caregiver) if caregiver else None,
        period=f"{local_start.year:04d}-{local_start.month:02d}",
        started_at=start,
        ended_at=end,
        lines=lines,
        amount_cents=amount,
        payout_cents=half_up(amount * rates.payout_bp, BP),
    )


def invoice_document(
    *, external_key: str, client_id: str, period: str, services: list[dict[str, Any]]
) -> dict[str, Any]:
    """The invoice Financeiro receives (PUT, whole): every billed service of the period."""
    payouts: dict[str, dict[str, Any]] = {}
    lines: list[dict[str, Any]] = []
    for s in services:
        lines.extend(s["lines"])
        if s["caregiver_id"]:
            entry = payouts.setdefault(
                s["caregiver_id"],
                {"caregiver_id": s["caregiver_id"], "amount_cents": 0, "service_ids": []},
            )
            entry["amount_cents"] += int(s["payout_cents"])
            entry["service_ids"].append(s["service_id"])
    return {
        "external_key": external_key,
        "client_id": client_id,
        "period": period,
        "currency": "BRL",
        "total_cents": sum(int(s["amount_cents"]) for s in services),
        "payout_total_cents": sum(int(s["payout_cents"]) for s in services),
        "services": [
            {
                "service_id": s["service_id"],
                "caregiver_id": s["caregiver_id"],
                "started_at": s["started_at"].isoformat(),
                "ended_at": s["ended_at"].isoformat(),
                "amount_cents": int(s["amount_cents"]),
                "payout_cents": int(s["payout_cents"]),
            }
            for s in services
        ],
        "lines": lines,
        "payouts": sorted(payouts.values(), key=lambda p: p["caregiver_id"]),
    }
