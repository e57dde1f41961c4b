"""Racing selection: the survivors' scores are the exhaustive ones, and so is the winner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from planted import make_planted_model, write_fixtures

from refusal_probe import load_model
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.racing import RaceConfig, bounds, race, schedule
from refusal_probe.selection.search import find_refusal_direction

KL, INDUCE, CUTOFF = 0.1, 0.0, 8


def grid_measure(bypass: np.ndarray, kl: np.ndarray, induce: np.ndarray, calls: list):
    """A ``measure`` that reads per-prompt values from full matrices (and logs what it read)."""

    def measure(cands, rows_h, rows_l):
        calls.append((list(cands), len(rows_h), len(rows_l)))
        t = lambda a, rows: torch.from_numpy(a[np.ix_(cands, rows)])  # noqa: E731
        return t(bypass, rows_h), t(kl, rows_l), t(induce, rows_l), len(cands)

    return measure


def race_grid(layers, n, bypass, kl, induce, calls, config=None):
    """Race a grid of ``n`` prompts a class read from full matrices, with the module's bars."""
    measure = grid_measure(bypass, kl, induce, calls)
    return race(layers, n, n, measure, cutoff=CUTOFF, kl_threshold=KL, induce_threshold=INDUCE,
                config=config)  # fmt: skip


def exhaustive_winner(layers, bypass, kl, induce):
    ok = [
        c
        for c in range(len(layers))
        if layers[c] < CUTOFF and kl[c].mean() <= KL and induce[c].mean() > INDUCE
    ]
    return min(ok, key=lambda c: bypass[c].mean()) if ok else None


def raced_winner(layers, result):
    ok = [
        c
        for c in range(len(layers))
        if not result.raced_out[c]
        and layers[c] < CUTOFF
        and result.scores[c, 2] <= KL
        and result.scores[c, 1] > INDUCE
    ]
    return min(ok, key=lambda c: float(result.scores[c, 0])) if ok else None


def random_grid(rng: np.random.Generator, k: int, n: int):
    layers = rng.integers(0, 10, k).tolist()
    mu_b = rng.normal(0, 2, k)
    mu_q = rng.exponential(0.08, k)
    mu_i = rng.normal(0.5, 1.0, k)
    bypass = mu_b[:, None] + rng.normal(0, rng.uniform(0.3, 3), (k, n))
    kl = np.abs(mu_q[:, None] + rng.normal(0, 0.05, (k, n)))
    induce = mu_i[:, None] + rng.normal(0, rng.uniform(0.3, 3), (k, n))
    return layers, bypass, kl, induce


def test_the_schedule_doubles_and_ends_with_every_prompt():
    assert schedule(32, 32, 8) == [(8, 8), (16, 16), (32, 32)]
    assert schedule(16, 10, 8) == [(8, 5), (16, 10)]
    assert schedule(8, 8, 8) == [(4, 4), (8, 8)]
    assert schedule(5, 5, 8) == [(4, 4), (5, 5)]
    assert schedule(3, 3, 8) == [(3, 3)]


def test_bounds_close_on_the_full_population():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mean, lo, hi = bounds(values, 4, 4.0)
    assert float(lo) == float(hi) == float(mean) == 2.5
    _, lo, hi = bounds(values, 100, 4.0)
    assert float(lo) < 2.5 < float(hi)


def test_survivors_carry_the_exhaustive_means_and_the_winner_is_the_exhaustive_one():
    """1,000 random grids: the raced winner equals the exhaustive one, and passes are saved."""
    rng = np.random.default_rng(0)
    mismatches, saved = 0, []
    for _ in range(1000):
        n = int(rng.choice([16, 32, 64]))
        layers, b, q, i = random_grid(rng, int(rng.integers(2, 24)), n)
        calls: list = []
        res = race_grid(layers, n, b, q, i, calls)
        for c in range(len(layers)):
            if not res.raced_out[c]:
                assert int(res.seen[c]) == n
                assert float(res.scores[c, 0]) == pytest.approx(b[c].mean(), abs=1e-9)
                assert float(res.scores[c, 2]) == pytest.approx(q[c].mean(), abs=1e-9)
        mismatches += raced_winner(layers, res) != exhaustive_winner(layers, b, q, i)
        rows = sum(len(cands) * (nh + nl) for cands, nh, nl in calls)
        saved.append(1 - rows / (len(layers) * 2 * n))
    assert mismatches <= 5  # z = 4 over a few dozen comparisons a grid
    assert np.mean(saved) > 0.3


def test_late_layers_and_filter_failures_leave_after_the_first_round():
    n = 32
    layers = [2, 9, 3, 4]  # layer 9 is past the cutoff
    b = np.zeros((4, n)) + np.linspace(-1, 1, n)
    q = np.full((4, n), 0.01)
    q[2] += 5.0  # a destructive ablation
    i = np.ones((4, n))
    i[3] = -2.0  # adding it does not induce refusal
    calls: list = []
    res = race_grid(layers, n, b, q, i, calls, RaceConfig(first=8))
    assert res.raced_out.tolist() == [False, True, True, True]
    assert res.seen.tolist() == [32, 8, 8, 8]
    assert calls[0][0] == [0, 1, 2, 3] and all(c[0] == [0] for c in calls[1:])
    assert math.isclose(float(res.scores[2, 2]), 5.01)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    folder, _ = make_planted_model(root / "model")
    return load_model(str(folder)), load_fixtures(write_fixtures(root / "prompts"))


def test_racing_on_a_model_chooses_what_exhaustive_scoring_chooses(planted):
    model, fx = planted
    full = find_refusal_direction(model, fx, DirectionConfig(n_resamples=50))
    raced = find_refusal_direction(model, fx, DirectionConfig(n_resamples=50, race=True))
    assert (raced.direction.layer, raced.direction.position) == (
        full.direction.layer,
        full.direction.position,
    )
    assert raced.selection.chosen.bypass == pytest.approx(full.selection.chosen.bypass, abs=1e-4)
    # four validation prompts a class: one round, nothing raced out, nothing to save
    assert not any("raced" in c.discarded for c in raced.selection.grid)
    assert raced.selection.rows == full.selection.rows


@pytest.mark.parametrize("alias", ["organism-chat", "organism-chat-benign-ft"])
def test_racing_on_the_organisms_chooses_the_exhaustive_winner(alias):
    from refusal_probe.resources import FIXTURES_DIR

    model = load_model(alias)
    fx = load_fixtures(FIXTURES_DIR / "prompts")
    full = find_refusal_direction(model, fx, DirectionConfig(n_resamples=50))
    raced = find_refusal_direction(model, fx, DirectionConfig(n_resamples=50, race=True))
    assert raced.selection.chosen is not None
    assert (raced.selection.chosen.layer, raced.selection.chosen.position) == (
        full.selection.chosen.layer,
        full.selection.chosen.position,
    )
    out = [c for c in raced.selection.grid if "raced" in c.discarded]
    assert out and all(c.seen is not None and c.seen < raced.selection.n_harmful for c in out)
    assert raced.selection.rows < full.selection.rows == full.selection.exhaustive_rows
    assert raced.selection.exhaustive_rows == full.selection.exhaustive_rows
    assert {g["seen"] for g in raced.selection.to_dict()["grid"]} >= {None, out[0].seen}
