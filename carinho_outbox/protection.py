"""Per-destination protection as the worker sees it: which destinations to claim on the fast
path, which through the guarded path (cap / rate limit), which to probe, and how a batch of
outcomes counts for the circuit breakers. Pure: the state comes from destination_state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .records import Outcome
from .settings import DestinationConfig


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    fast: list[str]
    guarded: list[str]
    probes: list[str]
    paused: list[str]


def plan(
    adapters: Iterable[str],
    configs: Mapping[str, DestinationConfig],
    states: Mapping[str, Mapping[str, Any]],
) -> ClaimPlan:
    fast: list[str] = []
    guarded: list[str] = []
    probes: list[str] = []
    paused: list[str] = []
    for name in sorted(adapters):
        state = states.get(name)
        circuit = state["state"] if state else "closed"
        if circuit != "closed":
            paused.append(name)
            if state and state.get("pause_over"):
                probes.append(name)
            continue
        config = configs.get(name)
        (guarded if config is not None and config.guarded else fast).append(name)
    return ClaimPlan(fast, guarded, probes, paused)


def tally(outcomes: Iterable[Outcome]) -> dict[str, tuple[int, int, str | None]]:
    """destination → (answered, transient failures, last error). A permanent 4xx means the
    destination is up and answering, so it counts as alive, not as an outage."""
    counts: dict[str, list[Any]] = {}
    for outcome in outcomes:
        entry = counts.setdefault(outcome.job.destination, [0, 0, None])
        if outcome.result.ok or outcome.result.permanent:
            entry[0] += 1
        else:
            entry[1] += 1
            entry[2] = outcome.result.error
    return {k: (v[0], v[1], v[2]) for k, v in counts.items()}


def needs_write(
    tallies: Mapping[str, tuple[int, int, str | None]], states: Mapping[str, Mapping[str, Any]]
) -> bool:
    """Successes on a healthy circuit change nothing that matters now; anything else does."""
    for name, (_ok, fail, _err) in tallies.items():
        state = states.get(name)
        if fail or state is None or state["state"] != "closed" or state["consecutive_failures"]:
            return True
    return False
