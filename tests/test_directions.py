"""Directions, their estimators and separation statistics (with the stats they rest on)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refusal_probe.activations.capture import Activations, prompts_fingerprint
from refusal_probe.activations.sites import POST_INSTRUCTION, Site
from refusal_probe.direction.estimators import (
    Candidates,
    Direction,
    difference_of_means,
    pca_of_differences,
)
from refusal_probe.direction.separation import cosine, cosine_per_layer, project, separation_curve
from refusal_probe.errors import DirectionError
from refusal_probe.stats.intervals import (
    Bootstrap,
    bootstrap,
    bootstrap_mean,
    rate,
    wilson_interval,
)
from refusal_probe.stats.separation import (
    auroc,
    best_threshold_accuracy,
    cohens_d,
    separation,
)

D = 32


def planted_acts(
    r: torch.Tensor,
    n: int,
    harmful: bool,
    seed: int,
    *,
    layers=(0, 1, 2),
    n_pos: int = 3,
    strength: float = 2.0,
    tag: str = "",
) -> Activations:
    """Gaussian activations, plus ``strength * r`` for harmful prompts at layers >= 1."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, len(layers), n_pos, D, generator=g) * 0.3
    if harmful:
        values[:, 1:] += strength * r
    texts = [f"{tag}{'h' if harmful else 'l'}{i}" for i in range(n)]
    return Activations(
        values,
        tuple(Site(layer) for layer in layers),
        POST_INSTRUCTION,
        prompts_fingerprint(texts),
        "fp",
    )


@pytest.fixture(scope="module")
def r():
    v = torch.randn(D, generator=torch.Generator().manual_seed(42))
    return v / v.norm()


# ---------------------------------------------------------------------------------------------
# planted effects


def test_difference_of_means_recovers_a_planted_direction(r):
    c = difference_of_means(planted_acts(r, 200, True, 1), planted_acts(r, 200, False, 2))
    assert c.vectors.dtype == torch.float64 and c.vectors.shape == (3, 3, D)
    assert c.offsets == (-3, -2, -1) and c.layers == (0, 1, 2)
    for layer in (1, 2):
        for pos in c.offsets:
            d = c.direction(layer, pos)
            assert cosine(d, Direction(r.double(), layer, pos, "planted", 0, 0)) >= 0.99
            assert d.norm == pytest.approx(2.0, rel=0.1)  # the class-mean gap


def test_pca_of_paired_differences_recovers_it_too(r):
    c = pca_of_differences(planted_acts(r, 200, True, 1), planted_acts(r, 200, False, 2))
    d = c.direction(1, -1)
    assert float(d.unit @ r.double()) >= 0.99  # signed: harmful projects higher


def test_identical_class_means_give_a_zero_candidate_not_a_random_one(r):
    h, l_ = planted_acts(r, 20, True, 1), planted_acts(r, 30, False, 2)
    same = h.values[:1].expand(20, -1, -1, -1).clone()
    h = Activations(same, h.sites, h.positions, h.prompts_sha256, h.model_fingerprint)
    l_ = Activations(
        same[:1].expand(30, -1, -1, -1).clone(), h.sites, h.positions, l_.prompts_sha256, "fp"
    )
    c = difference_of_means(h, l_)
    assert c.direction(0, -1).is_zero
    with pytest.raises(DirectionError, match="zero vector"):
        _ = c.direction(0, -1).unit


def test_separation_curve_matches_a_hand_computation(r):
    fit = difference_of_means(planted_acts(r, 100, True, 1), planted_acts(r, 100, False, 2))
    eh, el = planted_acts(r, 40, True, 3, tag="e"), planted_acts(r, 40, False, 4, tag="e")
    curve = separation_curve(fit, eh, el, position=-1, boot=Bootstrap(200))
    assert [c.layer for c in curve] == [0, 1, 2]
    d = fit.direction(1, -1)
    pos = (eh.values[:, 1, -1].double() @ d.unit).numpy()
    neg = (el.values[:, 1, -1].double() @ d.unit).numpy()
    hand_auc = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    pooled = math.sqrt(
        ((pos.size - 1) * pos.var(ddof=1) + (neg.size - 1) * neg.var(ddof=1))
        / (pos.size + neg.size - 2)
    )
    assert curve[1].stats.auroc.value == pytest.approx(hand_auc)
    assert curve[1].stats.cohens_d.value == pytest.approx((pos.mean() - neg.mean()) / pooled)
    assert curve[1].stats.auroc.value > 0.99 and curve[1].stats.auroc.low > 0.95
    assert curve[0].stats.auroc.high < 1.0  # layer 0 carries nothing


def test_separation_on_the_fit_prompts_is_refused(r):
    h, l_ = planted_acts(r, 50, True, 1), planted_acts(r, 50, False, 2)
    with pytest.raises(DirectionError, match="not fit on"):
        separation_curve(difference_of_means(h, l_), h, l_, position=-1)


def test_cosine_per_layer(r):
    a = difference_of_means(planted_acts(r, 100, True, 1), planted_acts(r, 100, False, 2))
    b = difference_of_means(planted_acts(r, 100, True, 5), planted_acts(r, 100, False, 6))
    cos = cosine_per_layer(a, b, -1)
    assert len(cos) == 3 and min(cos[1:]) > 0.95 and abs(cos[0]) < 0.5
    other = difference_of_means(
        planted_acts(r, 10, True, 1, layers=(0, 1)), planted_acts(r, 10, False, 2, layers=(0, 1))
    )
    with pytest.raises(DirectionError, match="cannot compare"):
        cosine_per_layer(a, other, -1)


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_nan_activations_are_refused(r):
    h, l_ = planted_acts(r, 10, True, 1), planted_acts(r, 10, False, 2)
    h.values[3, 1, 0, 5] = float("nan")
    with pytest.raises(DirectionError, match="NaN"):
        difference_of_means(h, l_)


def test_mismatched_captures_are_refused(r):
    with pytest.raises(DirectionError, match="different sites"):
        difference_of_means(
            planted_acts(r, 10, True, 1), planted_acts(r, 10, False, 2, layers=(0, 1))
        )


@pytest.mark.parametrize(
    "vector, position, match",
    [
        (torch.tensor([1.0, float("nan")]), -1, "NaN"),
        (torch.ones(2, 2), -1, "1-D"),
        (torch.ones(4), 0, "negative offset"),
    ],
)
def test_bad_directions_are_refused(vector, position, match):
    with pytest.raises(DirectionError, match=match):
        Direction(vector, 0, position, "x", 1, 1)


def test_projection_width_mismatch_is_refused():
    with pytest.raises(DirectionError, match="width"):
        project(torch.ones(3, 8), Direction(torch.ones(4), 0, -1, "x", 1, 1))


def test_direction_repr_and_summary_are_readable():
    d = Direction(torch.tensor([3.0, 4.0]), 2, -1, "diff_means", 10, 12)
    assert repr(d) == "Direction(diff_means @ L2.resid_pre pos -1, d=2, |r|=5, n=10+12)"
    assert d.to_dict()["norm"] == 5.0 and len(d.to_dict()["vector_sha256"]) == 64
    assert torch.equal(d.flipped().vector, -d.vector)


def test_candidates_lookup_error_names_what_exists(r):
    c = difference_of_means(planted_acts(r, 10, True, 1), planted_acts(r, 10, False, 2))
    assert isinstance(c, Candidates) and len(c) == 9
    with pytest.raises(DirectionError, match="no candidate"):
        c.direction(7, -1)


# ---------------------------------------------------------------------------------------------
# statistics by hand


def test_statistics_on_a_small_hand_example():
    pos, neg = [3.0, 4.0, 2.0], [1.0, 2.0, 0.0]
    assert auroc(pos, neg) == pytest.approx((3 + 3 + 2.5) / 9)
    assert cohens_d(pos, neg) == pytest.approx(2.0)  # means 3 and 1, both sd 1
    acc, t = best_threshold_accuracy(pos, neg)
    assert acc == pytest.approx(5 / 6) and 1.0 <= t < 3.0


def test_best_threshold_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 15).astype(float), rng.integers(0, 5, 12).astype(float)
    cuts = np.concatenate([[-1.0], np.unique(np.concatenate([pos, neg]))])
    brute = max(((pos > t).sum() + (neg <= t).sum()) / 27 for t in cuts)
    assert best_threshold_accuracy(pos, neg)[0] == pytest.approx(brute)


def test_vectorised_bootstrap_equals_recomputing_each_resample():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 12), rng.normal(0, 1, 9)
    sep = separation(pos, neg, Bootstrap(50, seed=7))
    cp, cn = Bootstrap(50, seed=7).stratified_counts(pos.size, neg.size)
    aucs, ds, accs = [], [], []
    for b in range(50):
        p, n = np.repeat(pos, cp[b].astype(int)), np.repeat(neg, cn[b].astype(int))
        aucs.append(auroc(p, n))
        ds.append(cohens_d(p, n))
        accs.append(best_threshold_accuracy(p, n)[0])
    for iv, stats in ((sep.auroc, aucs), (sep.cohens_d, ds), (sep.accuracy, accs)):
        lo, hi = np.quantile(stats, [0.025, 0.975], method="inverted_cdf")
        assert iv.low == pytest.approx(min(lo, iv.value)) and iv.high == pytest.approx(
            max(hi, iv.value)
        )


def test_bootstrap_is_seeded():
    x = np.arange(20.0)
    assert bootstrap_mean(x, Bootstrap(seed=3)) == bootstrap_mean(x, Bootstrap(seed=3))
    assert bootstrap_mean(x, Bootstrap(seed=3)) != bootstrap_mean(x, Bootstrap(seed=4))
    assert bootstrap(x, np.median, Bootstrap(100, seed=3)).n_resamples == 100


def test_wilson_interval_known_values():
    r = wilson_interval(8, 10)  # a textbook example: 0.8 [0.490, 0.943]
    assert (r.low, r.high) == (pytest.approx(0.4902, abs=1e-3), pytest.approx(0.9433, abs=1e-3))
    assert wilson_interval(0, 10).low == 0.0 and wilson_interval(10, 10).high == 1.0
    assert math.isnan(wilson_interval(0, 0).value)
    assert rate([True, False, True, True]).k == 3
    assert rate([True, False] * 10, method="bootstrap").method == (
        "bootstrap percentile (1000 resamples)"
    )


def test_one_empty_class_is_a_clear_error():
    with pytest.raises(ValueError, match="both classes"):
        separation([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        auroc([1.0, float("nan")], [0.0])


# ---------------------------------------------------------------------------------------------
# properties

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
samples = arrays(np.float64, st.integers(1, 12), elements=finite)


@settings(max_examples=60, deadline=None)
@given(samples, samples, st.integers(0, 2**16))
def test_bootstrap_intervals_contain_their_point_estimate(pos, neg, seed):
    sep = separation(pos, neg, Bootstrap(40, seed=seed))
    for iv in (sep.auroc, sep.cohens_d, sep.accuracy):
        assert iv.low <= iv.value <= iv.high
    m = bootstrap_mean(pos, Bootstrap(40, seed=seed))
    assert m.low <= m.value <= m.high


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 30), st.integers(0, 30))
def test_wilson_interval_contains_the_rate(k, extra):
    r = wilson_interval(k, k + extra) if k + extra else wilson_interval(0, 0)
    assert 0.0 <= r.low <= r.high <= 1.0
    if r.n:
        assert r.low <= r.value <= r.high


@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_flipping_the_scores_mirrors_auroc(pos, neg):
    """Exact property: AUROC(-s) = 1 - AUROC(s); Cohen's d changes sign."""
    assert auroc(-pos, -neg) == pytest.approx(1 - auroc(pos, neg))
    assert cohens_d(-pos, -neg) == pytest.approx(-cohens_d(pos, neg), nan_ok=True)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16))
def test_flipping_a_direction_keeps_the_auroc_of_absolute_projections(seed):
    """Exact property: |x . r^| = |x . (-r)^|: the ranking by |projection| and its AUROC stay."""
    g = torch.Generator().manual_seed(seed)
    d = Direction(torch.randn(8, generator=g), 1, -1, "x", 1, 1)
    h, l_ = torch.randn(10, 8, generator=g) + 1.0, torch.randn(9, 8, generator=g)
    a = auroc(project(h, d).abs().numpy(), project(l_, d).abs().numpy())
    b = auroc(project(h, d.flipped()).abs().numpy(), project(l_, d.flipped()).abs().numpy())
    assert a == b


def test_pairwise_auroc_agrees_with_rank_formula():
    rng = np.random.default_rng(3)
    for pos, neg in (
        (rng.normal(size=7), rng.normal(size=5)),
        (rng.integers(0, 3, 9), rng.integers(0, 3, 4)),
    ):
        pos, neg = np.asarray(pos, float), np.asarray(neg, float)
        pairs = np.mean([(a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)])
        assert auroc(pos, neg) == pytest.approx(pairs)


def test_restricting_the_grid(r):
    c = difference_of_means(planted_acts(r, 10, True, 1), planted_acts(r, 10, False, 2))
    sub = c.restrict(offsets=(-1,), layers=(2, 1))
    assert sub.layers == (2, 1) and sub.offsets == (-1,) and sub.vectors.shape == (2, 1, D)
    assert torch.equal(sub.direction(1, -1).vector, c.direction(1, -1).vector)
    assert c.restrict().vectors.shape == c.vectors.shape
    with pytest.raises(DirectionError, match="subsets"):
        c.restrict(layers=(5,))
