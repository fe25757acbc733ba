"""Builds the business-flow destinations from settings: `whatsapp` (Z-API, when
ZAPI_INSTANCE_ID and ZAPI_TOKEN are set) and `email` (SMTP, when SMTP_HOST is set). A channel
that is not configured gets no adapter, so its deliveries wait (held, attempts untouched)
until it is. Branding and templates are loaded here, once per process start, so a broken
branding file stops the worker at start."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from .adapters import Adapter
from .adapters.smtp import SmtpAdapter
from .adapters.zapi import ZapiAdapter
from .branding import load_branding
from .contacts import StoreAudience
from .feedback_tokens import make_token
from .messages import EmailComposer
from .settings import Settings
from .store import Store


def feedback_link_builder(settings: Settings) -> Callable[[dict[str, Any]], str] | None:
    """service data → the signed /feedback/<token> URL; None without FEEDBACK_SECRET."""
    if settings.feedback_secret is None or not settings.feedback_secret.get_secret_value():
        return None
    secret = settings.feedback_secret.get_secret_value()
    base = settings.public_base_url.rstrip("/")

    def link(data: dict[str, Any]) -> str:
        token = make_token(secret, str(data["service_id"]), int(time.time()))
        return f"{base}/feedback/{quote(token, safe='.')}"

    return link


def build_channel_adapters(
    settings: Settings, client: httpx.AsyncClient, store: Store
) -> dict[str, Adapter]:
    adapters: dict[str, Adapter] = {}
    branding = load_branding(settings.branding_file)
    audience = StoreAudience(store)
    token = settings.zapi_token.get_secret_value() if settings.zapi_token else ""
    if settings.zapi_instance_id and token:
        client_token = settings.zapi_client_token
        adapters["whatsapp"] = ZapiAdapter(
            base_url=settings.zapi_base_url,
            instance_id=settings.zapi_instance_id,
            token=token,
            client_token=client_token.get_secret_value() if client_token else None,
            client=client,
            timeout_s=settings.request_timeout_s,
            branding=branding,
            audience=audience,
        )
    if settings.smtp_host:
        adapters["email"] = SmtpAdapter(
            host=settings.smtp_host,
            port=settings.smtp_port,
            user=settings.smtp_user,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            starttls=settings.smtp_starttls,
            mail_from=settings.mail_from,
            timeout_s=settings.smtp_timeout_s,
            composer=EmailComposer(branding),
            audience=audience,
            feedback_link=feedback_link_builder(settings),
        )
    return adapters
