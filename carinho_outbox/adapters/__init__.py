"""Destination adapters: given a claimed job and its mapped data, send it and say what
happened. They never touch the database."""

from __future__ import annotations

from typing import Any, Protocol

from ..records import Job, SendResult


class Adapter(Protocol):
    name: str

    async def send(self, job: Job, data: dict[str, Any]) -> SendResult: ...

    async def aclose(self) -> None: ...
