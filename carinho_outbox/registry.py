"""Which destinations this process can deliver to: a plain dict built from settings.

A destination with no configuration gets no adapter, so workers never claim its deliveries:
they wait, attempts untouched, until it is configured (DESIGN.md §5).
"""

from __future__ import annotations

import httpx

from .adapters import Adapter
from .adapters.chat import build_chat_adapters
from .adapters.webhook import SharedSession, WebhookAdapter
from .channels import build_channel_adapters
from .jobs import build_job_adapters
from .settings import RetryPolicy, Settings
from .store import Store


def http_client(settings: Settings, concurrency: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.request_timeout_s),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        follow_redirects=False,
    )


def build_adapters(
    settings: Settings, client: httpx.AsyncClient, store: Store
) -> dict[str, Adapter]:
    adapters: dict[str, Adapter] = dict(build_job_adapters(store, settings))
    configured = [c for c in settings.destinations.values() if c.configured]
    if configured:
        session = SharedSession(settings.worker_concurrency)
        for config in configured:
            adapters[config.name] = WebhookAdapter(config, session)
    # Operator alerts (issue 6): Slack / Discord incoming webhooks, when their URL is set.
    slack, discord = settings.alert_slack_webhook_url, settings.alert_discord_webhook_url
    adapters.update(
        build_chat_adapters(
            slack.get_secret_value() if slack else None,
            discord.get_secret_value() if discord else None,
            client,
            settings.request_timeout_s,
        )
    )
    # Business flows (issue 5): the whatsapp (Z-API) and email (SMTP) channels.
    adapters.update(build_channel_adapters(settings, client, store))
    return adapters


def build_policies(settings: Settings) -> dict[str, RetryPolicy]:
    return {name: config.retry for name, config in settings.destinations.items()}


def unconfigured(settings: Settings) -> list[str]:
    return sorted(n for n, c in settings.destinations.items() if not c.configured)
