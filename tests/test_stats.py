"""The statistics toolkit: one Bootstrap, one Interval, Wilson, Bound and the verdict logic.

The coverage tests draw many samples of a known distribution with fixed seeds and count how often
the 95% interval holds the true value: deterministic, and each would fail if an interval were
too narrow (a wrong quantile, a wrong level) or far too wide.
"""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from refusal_probe.patching.results import bounds, pair_counts
from refusal_probe.report.record import CheckRecord
from refusal_probe.stats import (
    Bootstrap,
    Bound,
    Interval,
    Threshold,
    Verdict,
    bootstrap,
    bootstrap_mean,
    decide,
    paired_difference,
    paired_rate_difference,
    rate_difference,
    separation,
    tpr_at_fpr,
    two_sample_difference,
    wilson_interval,
)

#: Simulated samples per coverage test, and bootstrap resamples per interval.
N_SIM, B_SIM = 400, 200
#: A 95% interval should hold the truth in 95% of samples; with 400 samples the binomial sd of
#: the observed share is about 0.011, and percentile bootstraps of small samples run a little
#: narrow, so the share must lie in this band.
COVERAGE = (0.91, 0.985)


def _covers(iv: Interval, truth: float) -> bool:
    return iv.low <= truth <= iv.high


# ---------------------------------------------------------------------------------------------
# coverage on simulated data


def test_bootstrap_mean_covers_the_true_mean():
    rng = np.random.default_rng(2024)
    boot = Bootstrap(B_SIM, seed=0)
    hits = [
        _covers(bootstrap_mean(rng.normal(0.3, 1.0, 40), Bootstrap(B_SIM, seed=i)), 0.3)
        for i in range(N_SIM)
    ]
    assert boot.level == 0.95
    assert COVERAGE[0] <= np.mean(hits) <= COVERAGE[1]


def test_paired_difference_covers_the_true_change():
    rng = np.random.default_rng(7)
    hits = []
    for i in range(N_SIM):
        before = rng.random(60) < 0.9
        after = before & (rng.random(60) < 0.5)  # half of the refusals removed: change -0.45
        hits.append(_covers(paired_difference(after, before, Bootstrap(B_SIM, seed=i)), -0.45))
    assert COVERAGE[0] <= np.mean(hits) <= COVERAGE[1]


@pytest.mark.parametrize(("p_before", "p_removed"), [(0.9, 0.5), (1.0, 1.0), (0.95, 0.97)])
def test_paired_rate_difference_covers_the_true_change(p_before, p_removed):
    """Newcombe's paired score interval holds its level near 0 and 1, where a bootstrap fails."""
    rng = np.random.default_rng(17)
    truth = -p_before * p_removed
    hits = []
    for _ in range(N_SIM):
        before = rng.random(40) < p_before
        after = before & ~(rng.random(40) < p_removed)
        hits.append(_covers(paired_rate_difference(after, before), truth))
    assert np.mean(hits) >= COVERAGE[0]


def test_paired_rate_difference_does_not_collapse_when_every_pair_moves():
    every = paired_rate_difference([False] * 40, [True] * 40)
    assert every.value == -1.0 and every.low == -1.0 and -0.9 < every.high < -0.85
    assert every.n == 40 and every.method == "newcombe paired score"
    assert paired_rate_difference([True] * 40, [False] * 40).low > 0.85
    none = paired_rate_difference([True] * 40, [True] * 40)
    assert none.low < 0 < none.high  # no change seen: both signs stay possible
    with pytest.raises(ValueError, match="yes/no"):
        paired_rate_difference([0.5, 1.0], [0.0, 1.0])


def test_two_sample_rate_difference_covers_the_true_difference():
    rng = np.random.default_rng(11)
    hits = []
    for i in range(N_SIM):
        a = wilson_interval(int(rng.binomial(80, 0.9)), 80)
        b = wilson_interval(int(rng.binomial(60, 0.6)), 60)
        hits.append(_covers(rate_difference(a, b, Bootstrap(B_SIM, seed=i)), 0.3))
    assert COVERAGE[0] <= np.mean(hits) <= COVERAGE[1]


def test_stratified_auroc_covers_the_true_auroc():
    truth = NormalDist().cdf(1 / math.sqrt(2))  # AUROC of N(1, 1) against N(0, 1)
    rng = np.random.default_rng(3)
    hits = [
        _covers(
            separation(rng.normal(1, 1, 40), rng.normal(0, 1, 40), Bootstrap(B_SIM, seed=i)).auroc,
            truth,
        )
        for i in range(N_SIM)
    ]
    assert COVERAGE[0] <= np.mean(hits) <= COVERAGE[1]


def test_wilson_interval_covers_the_true_rate():
    rng = np.random.default_rng(5)
    for p, n in ((0.9, 50), (0.5, 30), (0.05, 100)):
        hits = [_covers(wilson_interval(int(rng.binomial(n, p)), n), p) for _ in range(N_SIM)]
        assert COVERAGE[0] <= np.mean(hits) <= COVERAGE[1], (p, n)


def test_a_narrower_level_covers_less():
    """The level is honoured: an 80% interval misses about one sample in five."""
    rng = np.random.default_rng(9)
    hits = [
        _covers(bootstrap_mean(rng.normal(0, 1, 50), Bootstrap(B_SIM, seed=i, level=0.8)), 0.0)
        for i in range(N_SIM)
    ]
    assert 0.73 <= np.mean(hits) <= 0.86


# ---------------------------------------------------------------------------------------------
# the one resampler and the one quantile


def test_counts_are_seeded_resamples_of_n_items():
    boot = Bootstrap(200, seed=4)
    c = boot.counts(13)
    assert c.shape == (200, 13) and (c.sum(1) == 13).all()
    assert np.array_equal(c, Bootstrap(200, seed=4).counts(13))
    assert not np.array_equal(c, Bootstrap(200, seed=5).counts(13))
    # the first stratum of a stratified draw is the one-sample draw: one generator, in order
    assert np.array_equal(boot.stratified_counts(13, 7)[0], c)


def test_indices_stand_for_their_counts():
    c = Bootstrap(50, seed=1).counts(9)
    idx = Bootstrap.indices(c)
    assert idx.shape == (50, 9)
    for row, counts in zip(idx, c, strict=True):
        assert np.array_equal(np.bincount(row, minlength=9), counts)


def test_every_interval_reads_the_inverted_cdf_percentile():
    x = np.random.default_rng(0).exponential(size=25)
    boot = Bootstrap(300, seed=2)
    means = boot.counts(x.size) @ x / x.size
    lo, hi = np.quantile(means, [0.025, 0.975], method="inverted_cdf")
    iv = bootstrap_mean(x, boot)
    assert (iv.low, iv.high) == (min(lo, iv.value), max(hi, iv.value))
    # a statistic evaluated per resample sees the same resamples
    med = bootstrap(x, np.mean, boot)
    assert (med.low, med.high) == pytest.approx((iv.low, iv.high))


def test_tpr_at_fpr_uses_the_stratified_resamples():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1.5, 1, 30), rng.normal(0, 1, 40)
    boot = Bootstrap(100, seed=3)
    iv = tpr_at_fpr(pos, neg, 0.05, boot)
    cp, cn = boot.stratified_counts(pos.size, neg.size)
    stats = []
    for b in range(100):
        p, n = np.repeat(pos, cp[b].astype(int)), np.repeat(neg, cn[b].astype(int))
        t = np.sort(n)[::-1][math.floor(0.05 * n.size)]
        stats.append((p > t).mean())
    lo, hi = np.quantile(stats, [0.025, 0.975], method="inverted_cdf")
    assert (iv.low, iv.high) == (min(lo, iv.value), max(hi, iv.value))


def test_patching_draws_its_pairs_from_the_same_bootstrap():
    boot = Bootstrap(64, seed=8)
    assert torch.equal(pair_counts(boot, 11), torch.from_numpy(boot.counts(11)))
    stats = torch.tensor([[1.0, math.nan], [2.0, math.nan], [3.0, 5.0], [4.0, math.nan]])
    lo, hi = bounds(Bootstrap(4, level=0.5), stats, torch.tensor([2.5, 5.0]))
    # NaN resamples (a vanished gap) are left out; a NaN-free column is the plain percentile
    assert lo.tolist() == [1.0, 5.0] and hi.tolist() == [3.0, 5.0]


def test_intervals_are_widened_to_their_estimate():
    boot = Bootstrap(10)
    iv = boot.interval(5.0, np.arange(10.0) * 0.1, "m")
    assert (iv.low, iv.high) == (0.0, 5.0)


def test_bootstrap_rejects_nonsense():
    with pytest.raises(ValueError, match="n_resamples"):
        Bootstrap(0)
    with pytest.raises(ValueError, match="level"):
        Bootstrap(level=1.0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="empty"):
        two_sample_difference([1.0], [])


def test_each_interval_names_its_method():
    boot = Bootstrap(250)
    x = np.arange(10.0)
    assert bootstrap_mean(x, boot).method == "bootstrap percentile (250 resamples)"
    assert bootstrap_mean(x, boot, of="prompts").method == (
        "bootstrap percentile (250 resamples of prompts)"
    )
    assert paired_difference(x, x[::-1], boot).method == (
        "paired bootstrap percentile (250 resamples of prompts)"
    )
    assert (
        separation(x, x - 1, boot).auroc.method == "stratified bootstrap percentile (250 resamples)"
    )
    assert two_sample_difference(x, x, boot).method == (
        "two-sample bootstrap percentile (250 resamples)"
    )
    assert wilson_interval(3, 10).method == "wilson"
    assert all(
        iv.n_resamples == 250
        for iv in (bootstrap_mean(x, boot), separation(x, x - 1, boot).cohens_d)
    )


def test_a_rate_without_trials_gives_nothing_measured():
    empty = wilson_interval(0, 0)
    iv = rate_difference(empty, wilson_interval(3, 4), Bootstrap(50))
    assert math.isnan(iv.value) and not iv.finite


# ---------------------------------------------------------------------------------------------
# the Interval type


def test_wilson_returns_an_interval_with_its_counts():
    r = wilson_interval(45, 50)
    assert isinstance(r, Interval)
    assert (r.value, r.n, r.k, r.n_resamples) == (0.9, 50, 45, 0)
    assert str(r) == f"0.90 [{r.low:.2f}, {r.high:.2f}] (45/50)"
    assert str(Interval(0.5, 0.25, 0.75)) == "0.500 [0.250, 0.750]"


def test_interval_round_trips_through_json_with_nan_as_none():
    for iv in (
        wilson_interval(7, 9),
        bootstrap_mean(np.arange(5.0), Bootstrap(20)),
        Interval.exact(0.4, n=5),
        Interval(math.nan, math.nan, math.nan, method="nothing"),
    ):
        d = json.loads(json.dumps(iv.to_dict(), allow_nan=False))
        back = Interval.from_dict(d)
        assert back.to_dict() == iv.to_dict()
    assert Interval.from_dict({"value": None, "low": 0.0, "high": 1.0}).finite is False


def test_interval_reads_the_old_rate_and_interval_layouts():
    """Cached results written before the one Interval type still load."""
    rate = {
        "value": 0.5,
        "low": 0.3,
        "high": 0.7,
        "n": 10,
        "k": 5,
        "level": 0.95,
        "method": "wilson",
    }
    assert Interval.from_dict(rate).k == 5
    old = {"value": 0.1, "low": 0.0, "high": 0.2, "level": 0.95, "method": "x", "n_resamples": 9}
    assert Interval.from_dict(old).n_resamples == 9 and Interval.from_dict(old).n is None


def test_interval_checks_its_bounds():
    with pytest.raises(ValueError, match="reversed"):
        Interval(0.5, 0.6, 0.4)
    ex = Interval.exact(0.3)
    assert (ex.low, ex.high, ex.level, ex.method) == (0.3, 0.3, 1.0, "exact")
    assert Interval(0.5, 0.4, 0.6).straddles(0.45) and not Interval(0.5, 0.4, 0.6).straddles(0.7)


# ---------------------------------------------------------------------------------------------
# Bound and decide


def test_bound_carries_its_symbol_key_and_side():
    assert (Bound.AT_LEAST.symbol, Bound.AT_MOST.symbol) == ("≥", "≤")
    assert (Bound.AT_LEAST.key, Bound.AT_MOST.key) == ("at_least", "at_most")
    assert Bound("at_most") is Bound.AT_MOST
    iv = Interval(0.5, 0.4, 0.6)
    assert Bound.AT_LEAST.clears(iv, 0.4) and not Bound.AT_LEAST.clears(iv, 0.41)
    assert Bound.AT_MOST.clears(iv, 0.6) and not Bound.AT_MOST.clears(iv, 0.59)
    assert Bound.AT_LEAST.misses(iv, 0.61) and not Bound.AT_LEAST.misses(iv, 0.6)
    assert Bound.AT_MOST.misses(iv, 0.39) and not Bound.AT_MOST.misses(iv, 0.4)


def test_threshold_takes_a_bound_or_its_key():
    assert Threshold(0.9, "at_least").bound is Bound.AT_LEAST  # type: ignore[arg-type]
    assert str(Threshold(0.1, Bound.AT_MOST)) == "≤ 0.1"
    with pytest.raises(ValueError, match="at_least, at_most"):
        Threshold(0.9, "above")  # type: ignore[arg-type]


def test_decide_judges_an_interval_on_either_side():
    above = Threshold(0.9, Bound.AT_LEAST)
    below = Threshold(0.1, Bound.AT_MOST)
    assert decide(wilson_interval(100, 100), above).verdict is Verdict.PASS
    assert decide(wilson_interval(0, 100), below).verdict is Verdict.PASS
    j = decide(Interval(0.3, 0.2, 0.4), below, name="rate")
    assert j.verdict is Verdict.FAIL and j.margin == pytest.approx(-0.1)
    assert "is above the bar" in j.message and "exceeds it by 0.1" in j.message
    j = decide(Interval(0.95, 0.92, 0.99), above)
    assert j.message.endswith("lower bound ≥ 0.9 by 0.02") and j.margin == pytest.approx(0.02)


def test_check_record_keeps_audit_json_field_names():
    d = {
        "id": "a.b",
        "audit": "a",
        "title": "t",
        "verdict": "pass",
        "message": "m",
        "value": 0.5,
        "lo": 0.4,
        "hi": 0.6,
        "level": 0.95,
        "method": "wilson",
        "n": 10,
        "threshold": 0.3,
        "direction": "at_least",
        "unit": "probability",
        "rationale": "r",
    }
    rec = CheckRecord.from_dict(d)
    assert rec.direction is Bound.AT_LEAST
    out = json.loads(json.dumps(rec.to_dict()))
    assert {k: out[k] for k in d} == d
