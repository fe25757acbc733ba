"""Prometheus metrics: counters and histograms kept by each process, gauges read from the
database at scrape time.

Several processes. Every web and worker process counts its own events, attempts and requests.
With `PROMETHEUS_MULTIPROC_DIR` set (to the same empty, writable directory for every process
of a host, emptied when the host's processes start), prometheus_client keeps those values in
files there and any web process's `/metrics` adds them up, workers included. Without it, each
process reports only itself, and worker counters are not visible (fine for one `make run`).
The variable must be in the environment before the process starts: prometheus_client reads
it when it is imported.

The gauges (deliveries by state and destination, oldest pending age, workers alive) are not
kept in any process: they are read from the database by the scrape itself, so they are the
same whichever process answers and need no multi-process care. With several hosts scraped,
aggregate them with max(), not sum().
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .records import Outcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `*_created` series double the output and no rule or panel of ours reads them.
disable_created_metrics()

# Seconds. Attempts: a destination's answer time. Lag: received → delivered, which spans
# retries with backoff, hence the long tail up to a day.
ATTEMPT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

EVENTS_RECEIVED = Counter(
    "carinho_events_received",
    "Events accepted by the ingress (repeated idempotency keys not counted)",
    ["type", "source"],
)
DELIVERIES_FINISHED = Counter(
    "carinho_deliveries_finished",
    "Deliveries that reached a final state (delivered or dead)",
    ["destination", "outcome"],
)
ATTEMPTS = Counter(
    "carinho_delivery_attempts",
    "Dispatch attempts by outcome (delivered, retry, dead)",
    ["destination", "outcome"],
)
ATTEMPT_DURATION = Histogram(
    "carinho_attempt_duration_seconds",
    "Time one dispatch attempt took (request to the destination and its answer)",
    ["destination"],
    buckets=ATTEMPT_BUCKETS_S,
)
DELIVERY_LAG = Histogram(
    "carinho_delivery_lag_seconds",
    "End to end: event received → delivered, retries included",
    ["destination"],
    buckets=LAG_BUCKETS_S,
)
HTTP_REQUESTS = Counter(
    "carinho_http_requests",
    "HTTP requests served, by route template (not raw path) and status",
    ["route", "method", "status"],
)
INGEST_GROUP = Histogram(
    "carinho_ingest_group_events",
    "Events written by one ingest statement of POST /events (1: written alone; more: the "
    "events of concurrent requests grouped, coalesce.py)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
HTTP_DURATION = Histogram(
    "carinho_http_request_duration_seconds",
    "HTTP request duration by route template",
    ["route"],
    buckets=HTTP_BUCKETS_S,
)

# Every metric name /metrics can show; the shipped alert rules and dashboard are checked
# against this list by the tests.
DB_GAUGES = (
    "carinho_deliveries",
    "carinho_oldest_pending_age_seconds",
    "carinho_workers_alive",
    "carinho_db_up",
)

_OUTCOME_LABEL = {"delivered": "delivered", "pending": "retry", "dead": "dead"}


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


# --- what processes call -------------------------------------------------------------------


def observe_event(event_type: str, sources: tuple[str, ...], duplicate: bool = False) -> None:
    """An accepted event; `sources` are the key's (one in practice; several are joined)."""
    if not duplicate:
        source = sources[0] if len(sources) == 1 else "+".join(sorted(sources)) or "-"
        EVENTS_RECEIVED.labels(event_type, source).inc()


def observe_ingest_group(events: int) -> None:
    INGEST_GROUP.observe(events)


def observe_written(events: Iterable[Any], duplicate: bool) -> None:
    """Events a webhook wrote (leads.WrittenEvent: .type, .source)."""
    if not duplicate:
        for event in events:
            EVENTS_RECEIVED.labels(event.type, event.source or "-").inc()


def observe_outcome(outcome: Outcome, now: datetime | None = None) -> None:
    """One recorded attempt (the worker calls this for each outcome whose lease held)."""
    observe_outcomes([outcome], now)


# `.labels()` takes a lock and builds the label tuple on every call, which was most of what
# a per-delivery observation cost in the worker; the children it returns live as long as the
# metric, so each is looked up once.
_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def observe_outcomes(outcomes: Iterable[Outcome], now: datetime | None = None) -> None:
    """A flushed batch of recorded attempts: counters added once per (destination, outcome),
    histograms observed per attempt."""
    at = now or datetime.now(UTC)
    counts: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        job = outcome.job
        status = outcome.status
        key = (job.destination, status)
        counts[key] = counts.get(key, 0) + 1
        duration_s = outcome.result.duration_ms / 1000
        _child(ATTEMPT_DURATION, job.destination).observe(duration_s if duration_s > 0 else 0.0)
        if status == "delivered":
            lag_s = (at - job.received_at).total_seconds()
            _child(DELIVERY_LAG, job.destination).observe(lag_s if lag_s > 0 else 0.0)
    for (destination, status), n in counts.items():
        label = _OUTCOME_LABEL.get(status, status)
        _child(ATTEMPTS, destination, label).inc(n)
        if status in ("delivered", "dead"):
            _child(DELIVERIES_FINISHED, destination, label).inc(n)


def observe_request(scope: dict[str, Any], status: int, duration_s: float) -> None:
    route = scope.get("route")
    # The route template keeps the label set bounded; unmatched paths (404 scans) share one.
    template = getattr(route, "path", None) or "unmatched"
    HTTP_REQUESTS.labels(template, scope.get("method", "-"), str(status)).inc()
    HTTP_DURATION.labels(template).observe(duration_s)


# --- scrape --------------------------------------------------------------------------------


@dataclass
class DbFigures:
    """What the scrape read from the database (None fields: the database did not answer)."""

    up: bool
    states: list[dict[str, Any]] = field(default_factory=list)
    oldest_pending_age_s: float = 0.0
    workers_alive: int = 0


class DbCollector(Collector):
    def __init__(self, figures: DbFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        up = GaugeMetricFamily("carinho_db_up", "1 when the scrape could read the database")
        up.add_metric([], 1.0 if f.up else 0.0)
        yield up
        if not f.up:
            return
        states = GaugeMetricFamily(
            "carinho_deliveries",
            "Deliveries by state (pending includes retrying) and destination, read at scrape",
            labels=["state", "destination"],
        )
        for row in f.states:
            states.add_metric([row["state"], row["destination"]], float(row["count"]))
        yield states
        oldest = GaugeMetricFamily(
            "carinho_oldest_pending_age_seconds",
            "Age of the oldest due pending delivery of a configured destination",
        )
        oldest.add_metric([], f.oldest_pending_age_s)
        yield oldest
        workers = GaugeMetricFamily(
            "carinho_workers_alive", "Workers whose heartbeat is recent (WORKER_DEAD_AFTER_S)"
        )
        workers.add_metric([], float(f.workers_alive))
        yield workers


def render(figures: DbFigures) -> bytes:
    """The exposition text: this process's (or every process's) metrics, then the DB gauges."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        own = generate_latest(registry)
    else:
        own = generate_latest(REGISTRY)
    db_registry = CollectorRegistry(auto_describe=False)
    db_registry.register(DbCollector(figures))
    return own + generate_latest(db_registry)
