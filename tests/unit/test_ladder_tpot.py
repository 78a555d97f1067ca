"""`--tpot-ms` moves the variant ladder (serving/ladder.py): the active variant's time per
output token, as the decode loop records it for finished generations (GenTime.observe),
above the objective steps down to a variant predicted within it; the better one comes
back once predicted under up_ratio of the objective for up_hold_s. Driven with observed
values directly: no clocks, no timing."""
from __future__ import annotations

import math
from types import SimpleNamespace

from reactinfer.serving.ladder import GenTime, Job, Ladder, ServiceTime, Variant

TPOT = 0.010  # the objective: 10 ms per token


def _variant(name: str, solo_s: float, quality: float) -> Variant:
    handle = SimpleNamespace(task="causal-lm", tokenizer=None)
    v = Variant(name, handle, quality, ServiceTime())  # type: ignore[arg-type]
    v.gen = GenTime(slots=8)
    v.gen.observe_alone(0.05, solo_s)  # the start-up measurement of one sequence alone
    return v


def _ladder(tpot_s: float = TPOT, slo_s: float = math.inf) -> Ladder:
    best = _variant("best", 0.004, 1.0)  # twice as slow a token as "fast" (more layers)
    fast = _variant("fast", 0.002, 0.9)
    ladder = Ladder([fast, best], slo_s=slo_s, max_batch=8, max_delay_s=0.0,
                    down_headroom=0.8, up_ratio=0.5, up_hold_s=1.0, tpot_s=tpot_s)
    ladder.order_by_cost()
    assert [v.name for v in ladder.variants] == ["best", "fast"]
    ladder.active = 0  # serving at the best
    return ladder


def finished(v: Variant, tpot_s: float, n: int = 20) -> None:
    """What the decode loop's _done records for `n` finished generations."""
    for _ in range(n):
        v.gen.observe(0.05, tpot_s)


QUEUE = [Job(math.inf, new_tokens=16)]  # a request waiting to join, with no deadline


def test_sustained_tpot_violations_step_down_and_headroom_steps_back_up():
    ladder = _ladder()
    best, fast = ladder.variants
    assert ladder.top == 0 and ladder.update(QUEUE, now=0.0) == 0  # best serves first
    finished(best, 0.008)  # under load, within the objective: it stays
    assert ladder.update(QUEUE, now=1.0) == 0
    finished(best, 0.014)  # sustained violations (the EWMA is past 10 ms)
    assert ladder.tpot_at(0) > TPOT and ladder.update(QUEUE, now=2.0) == 1
    # fast's time per token at this load is predicted from best's (14 × 2 / 4 = 7 ms), and
    # it starts from that figure, not from its start-up one (taken alone)
    assert ladder.tpot_at(1) < 0.8 * TPOT and fast.gen.token_s == ladder.tpot_at(1) > 0.006
    # on fast at the same load, best is predicted at 2 × fast's: over 5 ms, it stays down
    finished(fast, 0.004)
    assert ladder.tpot_at(0) > 0.5 * TPOT
    for t in (3.0, 4.0, 6.0):
        assert ladder.update(QUEUE, now=t) == 1
    # the load falls: best predicted at 2 × 2.2 ms < 5 ms, held for up_hold_s: back up
    finished(fast, 0.0022, n=40)
    assert ladder.tpot_at(0) <= 0.5 * TPOT
    assert ladder.update(QUEUE, now=7.0) == 1  # the hold starts
    assert ladder.update(QUEUE, now=8.5) == 0
    assert [(a, b) for _, a, b in ladder.switches] == [(0, 1), (1, 0)]


def test_steps_to_the_lowest_when_none_is_predicted_within_the_objective():
    ladder = _ladder()
    best, _ = ladder.variants
    finished(best, 0.040)  # fast predicted at 20 ms: still over, but the fastest there is
    assert ladder.update(QUEUE, now=0.0) == 1


def test_without_a_tpot_objective_the_ladder_ignores_tokens_times():
    ladder = _ladder(tpot_s=math.inf)
    best, _ = ladder.variants
    finished(best, 1.0)
    assert ladder.update(QUEUE, now=0.0) == 0 and not ladder.switches


def test_a_variant_not_measured_alone_is_judged_by_its_own_last_figure():
    ladder = _ladder()
    best, fast = ladder.variants
    fast.gen = GenTime(slots=8)  # no start-up measurement (--no-warmup): 0, unknown
    finished(best, 0.020)
    assert ladder.tpot_at(1) == 0.0 and ladder.update(QUEUE, now=0.0) == 1
