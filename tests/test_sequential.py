"""Sequential verdicts: the confidence sequence keeps its coverage under optional stopping.

The audits simulated here follow the audit's rule exactly: prompts are read in rounds, a check
stops as soon as its confidence sequence clears or misses the bar, and a check still undecided
when the prompts run out is judged on the fixed-n interval of all of them (Wilson for a rate,
Newcombe's for a paired change). A wrong verdict is a pass when the true figure is on the wrong
side of the bar, or a fail when it is on the right side (touching the bar counts as the right
side); an inconclusive verdict is never wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refusal_probe.stats.intervals import Interval, paired_rate_difference, wilson_interval
from refusal_probe.stats.sequential import (
    SequentialCheck,
    Stopping,
    confidence_path,
    rounds_of,
    sequence_interval,
    stopping_reason,
)
from refusal_probe.stats.verdicts import Bound, Threshold, Verdict, decide

LEVEL = 0.95


def _verdict(
    samples: np.ndarray,
    thr: Threshold,
    round_size: int,
    fixed: Interval,
    support: tuple[float, float] = (0.0, 1.0),
) -> tuple[Verdict, int]:
    """One simulated audit's verdict and the prompts it read (the audit's rule, via the path)."""
    n = samples.size
    path = confidence_path(samples, LEVEL, support)
    for r in rounds_of(n, round_size):
        t = r.stop
        if t >= n:
            break
        iv = Interval(path.mean[t - 1], path.low[t - 1], path.high[t - 1], LEVEL)
        if stopping_reason(iv, thr) is not None:
            return decide(iv, thr).verdict, t
    return decide(fixed, thr).verdict, n


def _wrong(verdict: Verdict, truth: float, thr: Threshold) -> bool:
    good_side = thr.bound.margin(truth, thr.value) >= 0
    return (verdict is Verdict.PASS and not good_side) or (verdict is Verdict.FAIL and good_side)


def _rate_audits(p: float, thr: Threshold, n: int, audits: int, seed: int) -> tuple[float, float]:
    """Wrong-verdict rate and mean prompts read over ``audits`` simulated rate checks."""
    rng = np.random.default_rng(seed)
    wrong, used = 0, 0
    for _ in range(audits):
        x = (rng.random(n) < p).astype(np.float64)
        v, t = _verdict(x, thr, 16, wilson_interval(int(x.sum()), n, LEVEL))
        wrong += _wrong(v, p, thr)
        used += t
    return wrong / audits, used / audits


@pytest.mark.parametrize(
    ("p", "bar", "bound", "audits"),
    [
        (0.90, 0.90, Bound.AT_LEAST, 1000),  # at the bar: a fail is wrong
        (0.88, 0.90, Bound.AT_LEAST, 400),  # just below: a pass is wrong
        (0.92, 0.90, Bound.AT_LEAST, 400),
        (0.10, 0.10, Bound.AT_MOST, 1000),
        (0.12, 0.10, Bound.AT_MOST, 400),
    ],
)
def test_wrong_verdicts_at_and_near_the_bar(
    p: float, bar: float, bound: Bound, audits: int
) -> None:
    """3,200 audits of 96 prompts in rounds of 16: wrong verdicts stay under 1 - level."""
    rate, _ = _rate_audits(p, Threshold(bar, bound), 96, audits, seed=int(p * 1000))
    assert rate <= 1 - LEVEL


def test_paired_changes_keep_coverage() -> None:
    """600 audits of a paired change (ablation drop) at its bar: wrong verdicts <= 1 - level."""
    rng = np.random.default_rng(7)
    thr, wrong = Threshold(0.5, Bound.AT_LEAST), 0
    for _ in range(600):
        before = rng.random(96) < 0.9
        after = before & (rng.random(96) < 0.45)  # drop = 0.9 * 0.55 = 0.495 (just below)
        d = before.astype(float) - after.astype(float)
        fixed = paired_rate_difference(after, before, LEVEL)  # after - before, negated below
        fixed = Interval(-fixed.value, -fixed.high, -fixed.low, LEVEL)
        v, _ = _verdict(d, thr, 16, fixed, support=(-1.0, 1.0))
        wrong += _wrong(v, 0.9 * 0.55, thr)
    assert wrong / 600 <= 1 - LEVEL


def test_far_from_the_bar_it_stops_early() -> None:
    """SmolLM2's case: a refusal rate of 0.18 against a bar of 0.9 is decided in one round."""
    _, used = _rate_audits(0.18, Threshold(0.9, Bound.AT_LEAST), 96, 200, seed=1)
    assert used <= 20
    _, used = _rate_audits(1.0, Threshold(0.9, Bound.AT_LEAST), 96, 50, seed=2)
    assert used <= 64  # a model that refuses everything: decided after half the prompts


def test_check_matches_the_path() -> None:
    """The audit's :class:`SequentialCheck` stops where the simulated rule does."""
    rng = np.random.default_rng(3)
    thr = Threshold(0.9, Bound.AT_LEAST)
    for _ in range(20):
        x = (rng.random(96) < rng.uniform(0.6, 1.0)).astype(np.float64)
        check = SequentialCheck(thr, 96, LEVEL, rate=True)
        for r in rounds_of(96, 16):
            if not check.open:
                break
            check.add(x[r.start : r.stop])
        stop = check.stopping()
        _, t = _verdict(x, thr, 16, wilson_interval(int(x.sum()), 96, LEVEL))
        assert stop.used == t
        if stop.reason in ("cleared", "missed"):
            assert decide(check.interval(), thr).verdict is not Verdict.INCONCLUSIVE
            assert check.interval().k == int(x[:t].sum())
        else:
            assert stop.reason == "exhausted" and stop.rounds == 6


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=80),
    st.sampled_from([0.5, 0.8, 0.95]),
)
def test_sequence_is_nested_and_holds_the_mean(xs: list[float], level: float) -> None:
    """Bounds only narrow with time, stay in the support and hold the running mean."""
    p = confidence_path(xs, level)
    assert np.all(np.diff(p.low) >= 0) and np.all(np.diff(p.high) <= 0)
    assert np.all(p.low >= 0) and np.all(p.high <= 1)
    iv = sequence_interval(xs, level, rate=True)
    assert iv.low <= iv.value <= iv.high and iv.n == len(xs) and iv.k == int(sum(xs))


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.sampled_from([0.0, 0.02, 0.5, 0.98, 1.0]),  # bars at and near the ends of [0, 1]
    st.sampled_from([-0.02, 0.0, 0.02]),  # the truth at or just beside its bar
    st.sampled_from(list(Bound)),
    st.sampled_from([1, 5, 16, 200]),  # round sizes: every prompt, odd, the default, one round
    st.sampled_from([8, 40, 96]),
)
def test_edges_keep_coverage(
    bar: float, offset: float, bound: Bound, round_size: int, n: int
) -> None:
    """At the edges (bars at 0 or 1, tiny n, odd rounds) wrong verdicts stay under 1 - level."""
    p = min(max(bar + offset, 0.0), 1.0)
    thr = Threshold(bar, bound)
    rng = np.random.default_rng(int(1000 * bar) + round_size + n)
    wrong = 0
    for _ in range(200):
        x = (rng.random(n) < p).astype(np.float64)
        v, _ = _verdict(x, thr, round_size, wilson_interval(int(x.sum()), n, LEVEL))
        wrong += _wrong(v, p, thr)
    # 200 audits: allow the binomial noise of an error rate of exactly 1 - level (3 sd)
    assert wrong / 200 <= (1 - LEVEL) + 3 * np.sqrt(LEVEL * (1 - LEVEL) / 200)


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="outside their support"):
        confidence_path([0.5, 2.0])
    with pytest.raises(ValueError, match="must be in"):
        confidence_path([0.5], level=1.0)
    with pytest.raises(ValueError, match="round size"):
        rounds_of(10, 0)
    with pytest.raises(ValueError, match="stopping reason"):
        Stopping(1, 1, 2, "bored")


def test_stopping_round_trips() -> None:
    s = Stopping(3, 48, 96, "cleared")
    assert Stopping.from_dict(s.to_dict()) == s and s.saved == 48


def test_peeking_at_a_fixed_n_interval_breaks_the_error_rate() -> None:
    """The simulation has teeth: stopping on Wilson intervals at each round errs 1 in 8 times."""
    rng = np.random.default_rng(900)
    thr, wrong = Threshold(0.9, Bound.AT_LEAST), 0
    for _ in range(1000):
        x = rng.random(96) < 0.9
        for t in (16, 32, 48, 64, 80, 96):
            iv = wilson_interval(int(x[:t].sum()), t, LEVEL)
            if stopping_reason(iv, thr) is not None or t == 96:
                wrong += _wrong(decide(iv, thr).verdict, 0.9, thr)
                break
    assert wrong / 1000 > 2 * (1 - LEVEL)
