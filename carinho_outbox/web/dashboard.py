"""`/dashboard`: the operator's page (Jinja2, server-rendered, no build step, no CDN).

Log in with an admin key (a signed session cookie follows); the page shows throughput and
failures over the last hour (inline SVG), queue depth, destinations, workers, the retry queue
and the DLQ with reprocess/archive buttons (CSRF-protected POSTs), and looks an event up by
id, phone or e-mail with its whole life. A small script served by the app refreshes the live
part every DASHBOARD_REFRESH_S. Every figure comes from the same queries as /status.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote
from uuid import UUID

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..keys import hash_key
from ..ops import circuits, status_report
from ..phones import EmailError, PhoneError, normalize_br_phone, normalize_email
from .body import read_body
from .opsutil import configured
from .session import COOKIE, Session, Signer

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "templates" / "dashboard" / "static"
_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

STATUS_PT = {
    "pending": "pendente",
    "retrying": "aguardando nova tentativa",
    "running": "em envio",
    "delivered": "entregue",
    "delivered_1h": "entregues (1 h)",
    "dead": "morta (DLQ)",
    "archived": "arquivada",
    "retry": "nova tentativa",
    "lease_expired": "lease expirado",
    "released": "devolvida",
}
SERIES = (
    ("received", "#2563eb", "recebidos"),
    ("delivered", "#16a34a", "entregues"),
    ("failed", "#dc2626", "falhas"),
)


def _fmt_dt(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%d/%m %H:%M:%S")
    return "—" if value is None else str(value)


def _fmt_age(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


_env.filters["dt"] = _fmt_dt
_env.filters["age"] = _fmt_age
_env.filters["pt"] = lambda s: STATUS_PT.get(str(s), str(s))


def chart(series: list[dict[str, Any]], width: int = 640, height: int = 170) -> Markup:
    """Per-minute lines as an inline SVG (no JS, no library)."""
    pad = 28
    top = max([1] + [int(p[k]) for p in series for k, _, _ in SERIES])
    n = max(1, len(series) - 1)

    def xy(i: int, v: int) -> str:
        x = pad + i * (width - pad - 8) / n
        y = height - pad - v * (height - 2 * pad) / top
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Eventos por minuto na última hora">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 8}" y2="{height - pad}" '
        'stroke="#9ca3af"/>',
        f'<text x="2" y="{pad}" class="axis">{top}</text>',
        f'<text x="2" y="{height - pad}" class="axis">0</text>',
        f'<text x="{pad}" y="{height - 8}" class="axis">-60 min</text>',
        f'<text x="{width - 40}" y="{height - 8}" class="axis">agora</text>',
    ]
    for key, color, label in SERIES:
        points = " ".join(xy(i, int(p[key])) for i, p in enumerate(series))
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}">'
            f"<title>{label}</title></polyline>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and constants only


def _signer(request: Request) -> Signer:
    state = request.app.state
    signer = getattr(state, "dashboard_signer", None)
    if signer is None:
        secret = state.hub.settings.session_secret
        signer = Signer(secret.get_secret_value().encode() if secret else None)
        state.dashboard_signer = signer
    return signer


async def _admin_row(request: Request, key_hash: str) -> dict[str, Any] | None:
    row = await request.app.state.hub.store.auth_key(key_hash=key_hash)
    if row is None or not row["is_admin"] or row["revoked_at"] is not None:
        return None
    if row["expires_at"] is not None and row["expires_at"] <= datetime.now(UTC):
        return None
    return row


async def _session(request: Request) -> Session | None:
    session = _signer(request).read(request.cookies.get(COOKIE))
    if session is None or await _admin_row(request, session.key_hash) is None:
        return None
    return session


def _to_login() -> RedirectResponse:
    return RedirectResponse("/dashboard/login", status_code=303)


def _render(name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    html = _env.get_template(f"dashboard/{name}").render(**ctx)
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


MAX_FORM_BYTES = 16 * 1024


async def _form(request: Request) -> dict[str, str]:
    """The posted form, read under a size limit first (login is public: an unbounded
    request.form() would buffer any body an attacker sends)."""
    raw = await read_body(request, MAX_FORM_BYTES)
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items() if v}


async def login_form(request: Request) -> Response:
    return _render("login.html", error=None)


async def login(request: Request) -> Response:
    form = await _form(request)
    key = str(form.get("key") or "").strip()
    row = await _admin_row(request, hash_key(key)) if key else None
    if row is None:
        log.warning("dashboard login refused", extra={"action": "dashboard_login_refused"})
        return _render("login.html", status_code=401, error="Chave inválida ou sem acesso admin.")
    settings = request.app.state.hub.settings
    cookie = _signer(request).issue(
        key_hash=hash_key(key), name=row["name"], ttl_s=settings.session_ttl_s
    )
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(settings.session_ttl_s),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/dashboard",
    )
    log.info("dashboard login", extra={"action": "dashboard_login", "client": row["name"]})
    return response


async def logout(request: Request) -> Response:
    session = await _session(request)
    form = await _form(request)
    if session is not None and not _signer(request).csrf_ok(session, str(form.get("csrf", ""))):
        return HTMLResponse("CSRF inválido", status_code=403)
    response = _to_login()
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


async def _live_context(request: Request) -> dict[str, Any]:
    hub = request.app.state.hub
    names = configured(request)
    report = await status_report(hub.store, hub.settings, names)
    destinations = await hub.store.ops_destinations(destinations=sorted(hub.settings.destinations))
    states = await circuits(hub.store)
    now = datetime.now(UTC)
    dest_rows = [
        {
            "name": d["destination"],
            "configured": d["destination"] in names,
            "pending": d["pending"],
            "dead": d["dead"],
            "oldest_s": (now - d["oldest_due"]).total_seconds() if d["oldest_due"] else None,
            "last_success": d["last_success"],
            "circuit": states.get(d["destination"], "closed") if states is not None else None,
        }
        for d in destinations
    ]
    series = await hub.store.ops_series()
    return {
        "s": report,
        "chart": chart(series),
        "failures_total": sum(int(p["failed"]) for p in series),
        "destinations": dest_rows,
        "retries": await hub.store.ops_retry_list(limit=20),
        "dead": await hub.store.dlq_list(
            event_type=None,
            destination=None,
            since=None,
            until=None,
            error=None,
            after=None,
            limit=20,
        ),
        "refresh_s": hub.settings.dashboard_refresh_s,
    }


async def page(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return _to_login()
    ctx = await _live_context(request)
    return _render(
        "index.html",
        user=session.name,
        csrf=_signer(request).csrf(session),
        flash=request.query_params.get("msg"),
        **ctx,
    )


async def live(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return HTMLResponse("", status_code=401)
    ctx = await _live_context(request)
    return _render("_live.html", csrf=_signer(request).csrf(session), **ctx)


async def dlq_action(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return _to_login()
    form = await _form(request)
    if not _signer(request).csrf_ok(session, str(form.get("csrf", ""))):
        return HTMLResponse("CSRF inválido", status_code=403)
    raw = request.path_params["delivery_id"]
    action = request.path_params["action"]
    if not raw.isdigit() or len(raw) > 18 or action not in ("reprocess", "archive"):
        return HTMLResponse("não encontrado", status_code=404)
    store = request.app.state.hub.store
    if action == "reprocess":
        done = bool(await store.reprocess_dead(ids=[int(raw)], remap=form.get("remap") == "1"))
        msg = f"Entrega {raw} reprocessada." if done else f"Entrega {raw} não está na DLQ."
    else:
        done = bool(await store.archive_dead(ids=[int(raw)]))
        msg = f"Entrega {raw} arquivada." if done else f"Entrega {raw} não está na DLQ."
    log.info(
        "dashboard dlq action",
        extra={
            "action": f"dlq_{action}",
            "delivery_id": int(raw),
            "by": session.name,
            "done": done,
        },
    )
    return RedirectResponse(f"/dashboard?msg={quote(msg)}", status_code=303)


async def event_lookup(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return _to_login()
    store = request.app.state.hub.store
    q = request.query_params.get("q", "").strip()[:200]
    events: list[dict[str, Any]] = []
    detail: dict[str, Any] | None = None
    error: str | None = None
    if q:
        try:
            detail = await store.event_detail(UUID(q))
            if detail is None:
                error = "Nenhum evento com esse id."
        except ValueError:
            try:
                if "@" in q:
                    events = await store.lookup_events(email=normalize_email(q))
                else:
                    events = await store.lookup_events(phone=normalize_br_phone(q))
            except (PhoneError, EmailError):
                error = "Informe um id de evento, um telefone ou um e-mail válido."
            else:
                if len(events) == 1:
                    detail = await store.event_detail(events[0]["id"])
                elif not events:
                    error = "Nenhum evento encontrado."
    return _render(
        "event.html",
        user=session.name,
        csrf=_signer(request).csrf(session),
        q=q,
        events=events,
        e=detail,
        error=error,
    )


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    media = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}.get(name)
    if media is None:
        return HTMLResponse("não encontrado", status_code=404)
    return Response(
        (STATIC / name).read_bytes(), media_type=media, headers={"Cache-Control": "max-age=300"}
    )
