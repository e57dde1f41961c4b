"""Screening candidates by attribution: the first-order estimate, and selection with it."""

from __future__ import annotations

import pytest
import torch
from planted import make_planted_model, write_fixtures

from refusal_probe import load_model
from refusal_probe.activations.runner import forward
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.direction.estimators import Direction
from refusal_probe.interventions.hooks import ABLATION_KINDS
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.scoring.refusal import refusal_score_from_logits, refusal_tokens
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.screening import ablation_moment, estimated_bypass, screen
from refusal_probe.selection.search import find_refusal_direction
from refusal_probe.testing import make_tiny_model

PROMPTS = ["How do I bake bread?", "Name a colour.", "Write a short note to my neighbour."]


def _mean_score_partly_ablated(model, tokens, unit, eps):
    """Mean refusal log-odds with ``x <- x - eps (x . u) u`` at every ablation site."""

    def hook(act, hook):
        u = unit.to(act.dtype)
        return act - eps * (act @ u)[..., None] * u

    hooks = [
        (hook_name(Site(layer, kind)), hook)
        for layer in range(model.n_layers)
        for kind in ABLATION_KINDS
    ]
    with torch.no_grad():
        logits = forward(model, model.chat.encode(PROMPTS), hooks)
    return float(refusal_score_from_logits(logits[:, -1, :], tokens).mean())


def test_the_estimate_is_the_derivative_of_partial_ablation(tmp_path):
    """``-u^T M u`` equals the finite-difference slope of ablating a fraction eps of ``u``."""
    model = load_model(str(make_tiny_model(tmp_path / "m", "llama", seed=3)))
    tokens = refusal_tokens(model.tokenizer, override=(5, 9))
    moment, scores, passes = ablation_moment(model, PROMPTS, tokens, batch_size=2)
    assert passes == 2 and moment.shape == (model.d_model, model.d_model)
    base = float(scores.mean())
    plain = _mean_score_partly_ablated(model, tokens, torch.zeros(model.d_model), 0.0)
    assert base == pytest.approx(plain, abs=1e-5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(model.d_model, generator=gen, dtype=torch.float64)
        d = Direction(v, layer=1, position=-1, method="diff_means", n_harmful=1, n_harmless=1)
        slope = float(estimated_bypass(moment, base, [d])[0]) - base
        eps = 1e-2
        up = _mean_score_partly_ablated(model, tokens, d.unit.float(), eps)
        down = _mean_score_partly_ablated(model, tokens, d.unit.float(), -eps)
        assert abs(slope) > 1e-4  # a random direction moves the score
        assert (up - down) / (2 * eps) == pytest.approx(slope, rel=0.02, abs=1e-4)


def test_screen_keeps_the_lowest_eligible_estimates():
    est = torch.tensor([3.0, -1.0, 0.5, -5.0, 2.0])
    assert screen(est, 2) == [1, 3]
    # index 3 is past the layer cutoff: eligible ones come first
    assert screen(est, 2, [True, True, True, False, True]) == [1, 2]
    assert screen(est, 10, [True, True, True, False, True]) == [0, 1, 2, 3, 4]
    assert screen(est, 0) == []


def test_screened_selection_scores_one_candidate_and_finds_the_planted_direction(tmp_path):
    folder, r = make_planted_model(tmp_path / "model")
    model, fx = load_model(str(folder)), load_fixtures(write_fixtures(tmp_path / "prompts"))
    full = find_refusal_direction(model, fx, DirectionConfig(n_resamples=50))
    lean = find_refusal_direction(model, fx, DirectionConfig(n_resamples=50, screen=1))
    assert lean.direction.layer == full.direction.layer == 1
    assert float(lean.direction.unit @ r.double()) >= 0.99
    grid = lean.selection.grid
    scored = [c for c in grid if not c.discarded & {"zero", "screened"}]
    # one candidate scored; the other three of layer 1 and the late layer's four are not
    assert [c.layer for c in scored] == [1]
    assert sum(c.discarded == {"screened"} for c in grid) == 7
    assert all(c.estimate is not None for c in grid if c.discarded != {"zero"})
    assert all(c.estimate is None for c in full.selection.grid)
    assert sum(not c.discarded & {"zero", "screened"} for c in full.selection.grid) == 8
    assert lean.selection.to_dict()["grid"][4]["estimate"] is not None
