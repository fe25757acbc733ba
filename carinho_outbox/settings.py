"""Configuration: built once at start from the environment and passed in, never read at import.

Names are the contract of DESIGN.md §6. Every tuning knob has an environment variable so an
operator (or a test) can shorten it; units are in the names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# HTTP destinations of the catalog. Channels (whatsapp, email) and alert sinks are separate.
HTTP_DESTINATIONS = ("crm", "operacao", "financeiro", "marketing", "cuidadores", "atendimento")


class RetryPolicy(BaseModel):
    """Exponential backoff with jitter; see retry.py."""

    base_s: float = Field(default=10.0, gt=0)
    cap_s: float = Field(default=3600.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    # A Retry-After header may push the next attempt later, but never beyond this.
    retry_after_cap_s: float = Field(default=6 * 3600.0, gt=0)


class DestinationConfig(BaseModel):
    name: str
    url: str | None = None
    token: SecretStr | None = None
    secret: SecretStr | None = None
    timeout_s: float = 10.0
    retry: RetryPolicy = RetryPolicy()
    # In-flight cap across all workers and deliveries-per-second limit (None: unlimited).
    max_in_flight: int | None = Field(default=None, ge=1)
    rate_per_s: float | None = Field(default=None, gt=0)

    @property
    def guarded(self) -> bool:
        return self.max_in_flight is not None or self.rate_per_s is not None

    @property
    def configured(self) -> bool:
        return bool(self.url)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str | None = None
    # The worker's LISTEN session only: a direct connection to Postgres when DATABASE_URL goes
    # through PgBouncer in transaction mode (LISTEN needs a session of its own). Unset: the same.
    listen_database_url: str | None = None
    port: int = 8000
    host: str = "127.0.0.1"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    log_level: str = "INFO"
    # "batch": one INFO line per flushed batch of deliveries (per delivery at DEBUG);
    # "each": one INFO line per delivery. Retries, dead letters and lease losses: always each.
    log_delivered: str = Field(default="batch", pattern="^(batch|each)$")

    # Worker tuning.
    worker_concurrency: int = Field(default=50, ge=1, le=2000)
    # Rows per claim statement (at most the concurrency): per-statement costs (round trip,
    # commit, scan) are amortised over the batch, so bigger is cheaper per delivery.
    worker_batch_size: int = Field(default=100, ge=1, le=1000)
    worker_queues: str = "critical,default,low"
    poll_interval_s: float = Field(default=1.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    worker_dead_after_s: float = Field(default=30.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    db_pool_max: int = Field(default=10, ge=1)
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    # Web: an ingest notifies workers by itself only when nothing was sent for this long;
    # the rest of a burst is folded into one trailing NOTIFY (wakeups.py). 0: every ingest.
    notify_window_ms: float = Field(default=20.0, ge=0, le=1000)
    # Whole-request bound in the web (503 past it); unset: twice DB_POOL_TIMEOUT_S.
    request_deadline_s: float | None = Field(default=None, gt=0)

    # Autoscaling supervisor (`carinho-worker --processes auto`, supervisor.py): one process
    # per AUTOSCALE_BACKLOG_PER_PROCESS due deliveries, more while the oldest waits longer than
    # AUTOSCALE_MAX_AGE_S; at most AUTOSCALE_MAX_SHIFT processes added or removed per step and
    # a step at most every AUTOSCALE_COOLDOWN_S (Horizon's balanceMaxShift / balanceCooldown).
    autoscale_interval_s: float = Field(default=2.0, gt=0)
    autoscale_cooldown_s: float = Field(default=3.0, ge=0)
    autoscale_max_shift: int = Field(default=1, ge=1)
    autoscale_backlog_per_process: int = Field(default=2000, ge=1)
    autoscale_max_age_s: float = Field(default=5.0, gt=0)

    # Per-destination protection.
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_pause_s: float = Field(default=30.0, gt=0)
    # A due delivery waiting longer than this is served before higher priorities (no starvation).
    max_wait_s: float = Field(default=300.0, gt=0)

    # Retry policy defaults (overridable per destination with DEST_<NAME>_RETRY_BASE_S, ...).
    retry_base_s: float = Field(default=10.0, gt=0)
    retry_cap_s: float = Field(default=3600.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)

    # Ingress.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # POST /events/batch: events per request, and the body limit that must let them through.
    ingest_batch_max: int = Field(default=500, ge=1, le=10_000)
    ingest_batch_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # POST /events: events of concurrent requests written by one statement (coalesce.py), at
    # most this many per statement and this many statements in flight per process. 1: off.
    ingest_group_max: int = Field(default=100, ge=1, le=1000)
    ingest_group_inflight: int = Field(default=2, ge=1, le=64)
    auth_cache_s: float = Field(default=5.0, ge=0)
    metrics_public: bool = True

    # Rate limits (issue 3): token buckets shared by all web processes through Postgres.
    # A key's own rate_per_s/burst (keys create --rate/--burst) wins; 0 disables a limit.
    rate_limit_per_s: float = Field(default=100.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=0)
    # Per client address on the public webhooks, checked before any authentication. Z-API
    # posts every customer's message from a handful of addresses, so its limit is far higher.
    rate_limit_ip_per_s: float = Field(default=10.0, ge=0)
    rate_limit_ip_burst: int = Field(default=30, ge=0)
    rate_limit_whatsapp_ip_per_s: float = Field(default=200.0, ge=0)
    rate_limit_whatsapp_ip_burst: int = Field(default=1000, ge=0)
    # Optional HMAC-SHA256 of the raw body, for a proxy in front of the WhatsApp webhook that
    # signs what it forwards (Z-API itself does not sign).
    zapi_webhook_hmac_secret: SecretStr | None = None
    zapi_webhook_hmac_header: str = "X-Webhook-Signature"

    # Z-API, SMTP, site, alerts (DESIGN.md §6).
    zapi_base_url: str = "https://api.z-api.io"
    zapi_instance_id: str | None = None
    zapi_token: SecretStr | None = None
    zapi_client_token: SecretStr | None = None
    zapi_webhook_token: SecretStr | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    mail_from: str = "Carinho <contato@carinho.com.br>"
    site_webhook_secret: SecretStr | None = None
    alert_slack_webhook_url: SecretStr | None = None
    alert_discord_webhook_url: SecretStr | None = None

    # Operating it (issue 6): alert rules, the dashboard session.
    alerts_cron: str = "* * * * *"
    alert_pending_age_s: float = Field(default=600.0, gt=0)
    alert_cooldown_s: float = Field(default=3600.0, ge=0)
    # A dead-letter incident is resolved after this long without a new dead letter.
    alert_dlq_quiet_s: float = Field(default=300.0, ge=0)
    alert_hub_name: str = "carinho-hub"
    # Unset: a random secret per process (sessions then do not survive a restart and do not
    # work across several web processes; set it in production).
    session_secret: SecretStr | None = None
    session_ttl_s: float = Field(default=8 * 3600.0, gt=0)
    dashboard_refresh_s: float = Field(default=10.0, ge=1)

    # Retention (the scheduler enqueues the job; a worker runs it).
    retention_delivered_days: float = Field(default=7.0, ge=0)
    retention_archived_days: float = Field(default=30.0, ge=0)
    retention_events_days: float = Field(default=30.0, ge=0)
    retention_batch: int = Field(default=5000, ge=1)
    retention_cron: str = "*/10 * * * *"

    # Business flows (issue 5): automations, feedback loop, scheduled syncs.
    # Unset: the packaged carinho_outbox/branding.toml.
    branding_file: Path | None = None
    # Unset: the feedback routes keep the delay in the table (7200 s from sql/0009); set, the
    # scheduler writes it to both feedback routes at start.
    feedback_delay_s: int | None = Field(default=None, ge=0)
    feedback_secret: SecretStr | None = None
    feedback_token_ttl_s: int = Field(default=7 * 86400, gt=0)
    # Where clients reach this hub's web process (the feedback link in e-mails).
    public_base_url: str = "http://127.0.0.1:8000"
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    # REST APIs the syncs call (not the event webhooks of DEST_*_URL).
    crm_api_url: str | None = None
    crm_api_token: SecretStr | None = None
    operacao_api_url: str | None = None
    operacao_api_token: SecretStr | None = None
    financeiro_api_url: str | None = None
    financeiro_api_token: SecretStr | None = None
    sync_crm_cron: str = "5 * * * *"
    sync_financeiro_cron: str = "30 4 * * *"
    sync_page_limit: int = Field(default=100, ge=1, le=1000)
    sync_max_pages: int = Field(default=1000, ge=1)
    # A run still marked running after this long is taken as crashed.
    sync_stale_s: float = Field(default=3600.0, gt=0)
    billing_tz: str = "America/Sao_Paulo"

    sql_dir: Path | None = None
    pgdata_dir: Path = Path(".pgdata")

    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lease_outlives_requests(self) -> Settings:
        if self.lease_s <= self.request_timeout_s:
            raise ValueError(
                f"LEASE_S ({self.lease_s}) must be longer than REQUEST_TIMEOUT_S "
                f"({self.request_timeout_s}), or live requests would be rescued and sent twice"
            )
        return self

    def request_deadline(self) -> float:
        return self.request_deadline_s or 2 * self.db_pool_timeout_s

    @property
    def queues(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    def default_retry(self) -> RetryPolicy:
        return RetryPolicy(
            base_s=self.retry_base_s, cap_s=self.retry_cap_s, max_attempts=self.max_attempts
        )


def _env_float(env: Mapping[str, str], key: str) -> float | None:
    raw = env.get(key)
    return float(raw) if raw not in (None, "") else None


def destination_from_env(
    name: str, env: Mapping[str, str], default_retry: RetryPolicy, timeout_s: float
) -> DestinationConfig:
    prefix = f"DEST_{name.upper()}_"
    retry = default_retry.model_copy(
        update={
            k: v
            for k, v in {
                "base_s": _env_float(env, prefix + "RETRY_BASE_S"),
                "cap_s": _env_float(env, prefix + "RETRY_CAP_S"),
                "max_attempts": (
                    int(env[prefix + "MAX_ATTEMPTS"]) if env.get(prefix + "MAX_ATTEMPTS") else None
                ),
            }.items()
            if v is not None
        }
    )
    cap = env.get(prefix + "MAX_IN_FLIGHT")
    rate = _env_float(env, prefix + "RATE_PER_S")
    token = env.get(prefix + "TOKEN")
    secret = env.get(prefix + "SECRET")
    return DestinationConfig(
        name=name,
        url=env.get(prefix + "URL") or None,
        token=SecretStr(token) if token else None,
        secret=SecretStr(secret) if secret else None,
        timeout_s=_env_float(env, prefix + "TIMEOUT_S") or timeout_s,
        retry=retry,
        max_in_flight=int(cap) if cap else None,
        rate_per_s=rate,
    )


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from `env` (default: os.environ and .env) plus explicit overrides."""
    source = os.environ if env is None else env
    fields: dict[str, object] = {
        name: source[name.upper()]
        for name in Settings.model_fields
        if name != "destinations" and name.upper() in source
    }
    fields.update(overrides)
    settings = Settings(**fields)  # type: ignore[arg-type]
    if "destinations" not in overrides:
        retry = settings.default_retry()
        settings.destinations = {
            name: destination_from_env(name, source, retry, settings.request_timeout_s)
            for name in HTTP_DESTINATIONS
        }
    return settings


def sql_dir(settings: Settings | None = None) -> Path:
    """Where the migrations live: the setting, the installed package, or the source tree."""
    if settings is not None and settings.sql_dir is not None:
        return settings.sql_dir
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("cannot find the sql/ migrations directory; set SQL_DIR")
