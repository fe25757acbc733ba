"""The benchmark's verdicts (bench/__main__.targets): ratios of figures from one run, and the
"out of reach" mark when 3x pgqueuer lies above the bare claim loop measured beside it."""

from __future__ import annotations

from carinho_outbox.bench.__main__ import Results, targets
from carinho_outbox.bench.common import Figure


def results(**values: float) -> Results:
    res = Results()
    for key, value in values.items():
        res.figures[key] = Figure(key, value, "x")
    return res


def verdicts(res: Results) -> dict[str, tuple[float, str]]:
    return {c["target"]: (c["value"], c["verdict"]) for c in targets(res)}


ENGINE = "engine (HTTP no-op dest, 1 proc) / pgqueuer no-op jobs"
REACH = "3 x pgqueuer no-op jobs / bare claim loop (> 1: the 3x target is above the ceiling)"


def test_a_reachable_target_fails_plainly() -> None:
    got = verdicts(results(engine_http_1=5_000, pgqueuer_noop=2_000, claim_1=20_000))
    assert got[ENGINE] == (2.5, "FAIL")
    assert got[REACH] == (0.3, "reachable")


def test_three_times_a_peer_above_the_claim_ceiling_is_marked_out_of_reach() -> None:
    got = verdicts(results(engine_http_1=8_000, pgqueuer_noop=8_700, claim_1=22_300))
    assert got[ENGINE][1] == "FAIL (out of reach)"
    assert got[REACH][1] == "out of reach"
    assert got["engine (HTTP no-op dest, 1 proc) / bare claim loop (1 proc)"][1] == "PASS"


def test_ingress_takes_the_best_ingress_figure() -> None:
    got = verdicts(
        results(
            ingress_1=1_000,
            ingress_2_nolimit=3_300,
            pgqueuer_single_1=3_000,
            pgqueuer_single_n=2_000,
        )
    )
    value, verdict = got["ingress events/s / pgqueuer single enqueue (best of 1 and N clients)"]
    assert (round(value, 2), verdict) == (1.1, "PASS")
    assert got[ENGINE][1] == "n/a"
