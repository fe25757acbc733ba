"""`GET/POST /feedback/{token}`: the small rating form the feedback e-mail links to.

The token (feedback_tokens.py) is verified without the database: signed with FEEDBACK_SECRET,
valid FEEDBACK_TOKEN_TTL_S. A POST records the answer and writes `feedback.received` (source
`feedback`, channel `email`) in one transaction; the first answer for a service wins, by link
or by WhatsApp reply, so the link is single-use. Pages are pt-BR HTML for a phone; the status
codes still say what happened (200 form / thanks, 404 bad link, 410 expired, 409 already
answered, 422 no rating chosen).
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from .. import feedback
from ..branding import Branding, load_branding
from ..feedback_tokens import FeedbackToken, TokenError, read_token
from .body import read_body

MAX_FORM_BYTES = 16 * 1024
SOURCE = "feedback"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "feedback"
_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
# The page must not be framed by another site (a click-jacked rating) nor cached by a proxy.
HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; img-src https: data:; "
    "style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


@lru_cache(maxsize=4)
def _branding(path: Path | None) -> Branding:
    return load_branding(path)


def _page(branding: Branding, status: int, **values: Any) -> HTMLResponse:
    context: dict[str, Any] = {"show_form": False, "error": None, "chosen": None, "comment": ""}
    context.update(values)
    html = _env.get_template("page.html").render(
        form=branding.form,
        empresa=branding.company,
        cores=branding.colors,
        notas=branding.ratings,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _notice(branding: Branding, status: int, key: str) -> HTMLResponse:
    return _page(branding, status, heading=branding.form["titulo"], message=branding.form[key])


def _verify(request: Request) -> FeedbackToken | str:
    """The token, or the branding key of the page explaining why it is refused."""
    settings = request.app.state.hub.settings
    secret = settings.feedback_secret
    if secret is None or not secret.get_secret_value():
        return "invalido"
    try:
        return read_token(
            secret.get_secret_value(),
            request.path_params["token"],
            ttl_s=settings.feedback_token_ttl_s,
            now=time.time(),
        )
    except TokenError as exc:
        return "expirado" if exc.reason == "expired" else "invalido"


def _refused(branding: Branding, reason: str) -> HTMLResponse:
    return _notice(branding, 410 if reason == "expirado" else 404, reason)


async def get_feedback(request: Request) -> HTMLResponse:
    hub = request.app.state.hub
    branding = _branding(hub.settings.branding_file)
    token = _verify(request)
    if isinstance(token, str):
        return _refused(branding, token)
    row = await hub.store.feedback_request_get(service_id=token.service_id)
    if row is not None and row["answered_at"] is not None:
        return _notice(branding, 200, "ja_respondido")
    return _page(branding, 200, show_form=True)


async def post_feedback(request: Request) -> HTMLResponse:
    hub = request.app.state.hub
    branding = _branding(hub.settings.branding_file)
    await hub.limiter.for_address(request, "feedback", hub.limiter.site_quota())
    token = _verify(request)
    if isinstance(token, str):
        return _refused(branding, token)
    raw = await read_body(request, MAX_FORM_BYTES)
    try:
        fields = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than the form has: not our form
        fields = {}
    rating_text = (fields.get("rating") or [""])[0].strip()
    comment = (fields.get("comment") or [""])[0].strip()[: feedback.MAX_COMMENT_CHARS]
    if rating_text not in {"1", "2", "3", "4", "5"}:
        return _page(
            branding, 422, show_form=True, error=branding.form["pergunta"], comment=comment
        )
    answered = await feedback.answer(
        hub.store,
        service_id=token.service_id,
        rating=int(rating_text),
        comment=comment or None,
        channel="email",
        source=SOURCE,
        request_id=request.scope["state"].get("request_id"),
        client="feedback-form",
    )
    if answered is None:
        return _notice(branding, 409, "ja_respondido")
    request.scope["state"]["event_ids"] = [str(answered.event_id)]
    return _notice(branding, 200, "obrigado")
