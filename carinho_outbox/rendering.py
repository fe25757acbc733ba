"""Turns an event into what one destination receives, with the mapping version the delivery
was pinned to. Versions are immutable, so parsed specs are cached for the life of the process."""

from __future__ import annotations

from typing import Any

from .mapping import IDENTITY_SPEC, MappingSpec, parse_spec, render
from .records import Job
from .store import Store


class Renderer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._specs: dict[tuple[str, str, int], MappingSpec] = {}

    async def spec_for(self, event_type: str, destination: str, version: int | None) -> MappingSpec:
        if version is None:
            return IDENTITY_SPEC
        key = (event_type, destination, version)
        spec = self._specs.get(key)
        if spec is None:
            raw = await self.store.mapping_spec(
                event_type=event_type, destination=destination, version=version
            )
            spec = IDENTITY_SPEC if raw is None else parse_spec(raw)
            self._specs[key] = spec
        return spec

    async def data_for(self, job: Job) -> dict[str, Any]:
        """Raises mapping.MappingError when the pinned mapping cannot render this payload."""
        spec = await self.spec_for(job.type, job.destination, job.mapping_version)
        return render(spec, job.payload, meta_of(job))


def meta_of(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.event_id),
        "type": job.type,
        "source": job.source,
        "occurred_at": job.occurred_at.isoformat(),
    }
