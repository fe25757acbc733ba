"""The body every destination receives (DESIGN.md §5)."""

from __future__ import annotations

import json
from typing import Any

from .records import Job


def envelope(job: Job, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(job.event_id),
        "type": job.type,
        "source": job.source,
        "occurred_at": job.occurred_at.isoformat(),
        "data": data,
    }


# Compact and stable: the signature covers these exact bytes. One encoder for every delivery
# (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=False)


def encode(doc: dict[str, Any]) -> bytes:
    return _ENCODER.encode(doc).encode()


def webhook_id(job: Job) -> str:
    """Stable across every retry of one delivery, so receivers can de-duplicate."""
    return f"dlv_{job.id}"
