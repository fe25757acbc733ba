"""What the automations say: the template per (event type, channel) and the rendered WhatsApp
and e-mail messages. Pure: no I/O; the channel adapters send what this builds.

The template is chosen by (event type, channel); a mapping version may pick another one by
setting ``template`` in the data it renders (``{"to": "template", "const": "welcome"}``), so an
operator can switch a flow's message without a deploy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape

from .branding import Branding

RATING_ID_PREFIX = "rating_"
RATINGS = (1, 2, 3, 4, 5)

DEFAULT_TEMPLATES: dict[tuple[str, str], str] = {
    ("lead.created", "whatsapp"): "greeting",
    ("client.registered", "whatsapp"): "welcome",
    ("client.registered", "email"): "welcome",
    ("service.completed", "whatsapp"): "feedback_request",
    ("service.completed", "email"): "feedback_request",
}
CHANNEL_TEMPLATES: dict[str, frozenset[str]] = {
    "whatsapp": frozenset({"greeting", "welcome", "feedback_request"}),
    "email": frozenset({"welcome", "feedback_request"}),
}
EMAIL_DIR = Path(__file__).resolve().parent / "templates" / "email"


class MessageError(ValueError):
    """No message can be built for this delivery (a permanent failure)."""


def rating_id(rating: int) -> str:
    return f"{RATING_ID_PREFIX}{rating}"


def rating_from_id(value: object) -> int | None:
    """The rating a button or list reply id names ("rating_4" → 4), else None."""
    if not isinstance(value, str) or not value.startswith(RATING_ID_PREFIX):
        return None
    tail = value[len(RATING_ID_PREFIX) :]
    return int(tail) if tail in {"1", "2", "3", "4", "5"} else None


def template_for(event_type: str, channel: str, data: dict[str, Any]) -> str:
    chosen = data.get("template") or DEFAULT_TEMPLATES.get((event_type, channel))
    if chosen is None:
        raise MessageError(f"no {channel} template for {event_type}")
    if chosen not in CHANNEL_TEMPLATES[channel]:
        raise MessageError(f"unknown {channel} template {chosen!r}")
    return str(chosen)


@dataclass(frozen=True, slots=True)
class WhatsAppMessage:
    endpoint: str  # send-text | send-button-list | send-option-list
    body: dict[str, Any]

    @property
    def has_rating_buttons(self) -> bool:
        return self.endpoint != "send-text"


def whatsapp_message(
    template: str, branding: Branding, *, phone_digits: str, name: str | None
) -> WhatsAppMessage:
    ctx = branding.context(name)
    if template == "greeting":
        return WhatsAppMessage(
            "send-text",
            {"phone": phone_digits, "message": branding.text("whatsapp", "saudacao_lead", ctx)},
        )
    if template == "welcome":
        return WhatsAppMessage(
            "send-text",
            {
                "phone": phone_digits,
                "message": branding.text("whatsapp", "boas_vindas_cliente", ctx),
            },
        )
    if template == "feedback_request":
        # Buttons do not render on every phone (and not on WhatsApp Web): the text always says
        # how to answer without them, and a plain "1".."5" reply is understood.
        text = (
            branding.text("whatsapp", "pedido_avaliacao", ctx)
            + "\n\n"
            + branding.text("whatsapp", "avaliacao_alternativa", ctx)
        )
        if branding.rating_style == "option_list":
            return WhatsAppMessage(
                "send-option-list",
                {
                    "phone": phone_digits,
                    "message": text,
                    "optionList": {
                        "title": branding.text("whatsapp", "titulo_lista", ctx),
                        "buttonLabel": branding.text("whatsapp", "botao_lista", ctx),
                        "options": [
                            {"id": rating_id(n), "title": branding.ratings[n], "description": ""}
                            for n in RATINGS
                        ],
                    },
                },
            )
        return WhatsAppMessage(
            "send-button-list",
            {
                "phone": phone_digits,
                "message": text,
                "buttonList": {
                    "buttons": [{"id": rating_id(n), "label": branding.ratings[n]} for n in RATINGS]
                },
            },
        )
    raise MessageError(f"unknown whatsapp template {template!r}")


@dataclass(frozen=True, slots=True)
class EmailContent:
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)


class EmailComposer:
    """Renders the multipart e-mails from templates/email/<template>.{txt,html}."""

    def __init__(self, branding: Branding, directory: Path = EMAIL_DIR) -> None:
        self.branding = branding
        self.env = Environment(
            loader=FileSystemLoader(directory),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )
        # Fail at start, not at the first send, when a template is missing or broken.
        for template in CHANNEL_TEMPLATES["email"]:
            for ext in ("txt", "html"):
                try:
                    self.env.get_template(f"{template}.{ext}")
                except TemplateError as exc:
                    raise MessageError(f"e-mail template {template}.{ext}: {exc}") from None

    def compose(self, template: str, *, name: str | None, link: str | None = None) -> EmailContent:
        b = self.branding
        ctx = b.context(name, link=link or "")
        if template == "welcome":
            subject = b.text("email", "assunto_boas_vindas", ctx)
            body = b.text("email", "boas_vindas", ctx)
        elif template == "feedback_request":
            if not link:
                raise MessageError("the feedback e-mail needs a link")
            subject = b.text("email", "assunto_avaliacao", ctx)
            body = b.text("email", "pedido_avaliacao", ctx)
        else:
            raise MessageError(f"unknown email template {template!r}")
        values = {
            "subject": subject,
            "paragraphs": [p.strip() for p in body.split("\n") if p.strip()],
            "empresa": b.company,
            "cores": b.colors,
            "rodape": b.text("email", "rodape", ctx),
            "button": b.text("email", "botao_avaliacao", ctx),
            "link": link or "",
        }
        return EmailContent(
            subject=subject,
            text=self.env.get_template(f"{template}.txt").render(**values),
            html=self.env.get_template(f"{template}.html").render(**values),
        )
