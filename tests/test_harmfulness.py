"""The choice of the monitor's harmfulness readout on held-out fit/calibration data.

Uses the planted monitor model (``tests/monitor_planted.py``): harmfulness lives on a known
direction carried by marker words, so a readout either sees it or does not.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from monitor_planted import MARKERS, make_monitor_model, random_prompt, write_monitor_fixtures

from refusal_probe import LoadOptions, load_model
from refusal_probe.errors import MonitorError
from refusal_probe.monitor.fit import MonitorConfig, fit_monitor
from refusal_probe.monitor.harmfulness import (
    DEFAULT_SHRINKAGES,
    DEFAULT_SPANS,
    POOLS,
    search_harmfulness,
)
from refusal_probe.monitor.harmfulness_choice import Candidate, choose
from refusal_probe.prompts.sets import load_fixtures


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmfulness-planted")
    pm = make_monitor_model(root / "model")
    model = load_model(str(pm.folder), LoadOptions(cache_dir=str(root / "convert")))
    return pm, model, root


def _prompts(n: int, harmful: bool, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [random_prompt(rng, harmful) for _ in range(n)]


def test_stable_candidates_win_over_better_separated_unstable_ones():
    spans = ("last_instruction", "instruction")
    drifting = Candidate(2, "last_instruction", 0.99, 0.99, 0.30, False)
    steady = Candidate(1, "instruction", 0.90, 0.85, 0.05, True)
    also = Candidate(0, "instruction", 0.95, 0.85, 0.02, True)  # same worst case, earlier layer
    chosen, rule = choose([drifting, steady, also], spans, 2.0, 0.05)
    assert chosen is also and "2 of 3" in rule
    # With nothing stable, the least drifting candidate is taken and the rule says so.
    unstable = [drifting, Candidate(0, "instruction", 0.6, 0.6, 0.2, False)]
    chosen, rule = choose(unstable, spans, 2.0, 0.05)
    assert chosen.fpr_unseen == 0.2 and rule.startswith("every candidate")


def test_detection_at_the_operating_point_decides_between_stable_candidates():
    spans = DEFAULT_SPANS
    # Ranks attacks above harmless prompts (AUROC 0.99) but clears the largest calibration score
    # with only 60% of them: at a 2% target the threshold is that largest score.
    ranks = Candidate(1, "instruction", 0.99, 0.99, 0.01, True, auroc_attack=0.99, tpr_attack=0.6)
    clears = Candidate(3, "instruction_mean", 0.96, 0.95, 0.01, True, auroc_attack=1.0,
                       tpr_attack=0.97)  # fmt: skip
    # Detects best, but its threshold does not hold on harmless prompts of unseen categories.
    heavy = Candidate(1, "instruction", 0.99, 0.99, 0.05, False, auroc_attack=1.0, tpr_attack=1.0)
    chosen, rule = choose([ranks, clears, heavy], spans, 1.5, 0.02)
    assert chosen is clears and "tpr_attack" in rule and "above 1.5 x 0.02" in rule
    assert clears.separation == 0.95 and ranks.separation == 0.6
    # Without attacks the operating-point score is left out, as auroc_attack is.
    assert Candidate(0, "instruction", 0.9, 0.8, 0.0, True).separation == 0.8


def test_search_finds_the_planted_direction_and_scores_every_candidate(planted):
    pm, model, _ = planted
    fit = (_prompts(40, True, 1), _prompts(40, False, 2))
    shift = (_prompts(20, True, 3), _prompts(30, False, 4))
    direction, search = search_harmfulness(model, fit, shift, target_fpr=0.1)
    assert [(c.layer, c.pool, c.shrinkage, c.span) for c in search.candidates] == [
        (layer, pool, a, span)
        for layer in range(model.n_layers)
        for pool in POOLS
        for a in DEFAULT_SHRINKAGES
        for span in DEFAULT_SPANS
    ]
    plain = [c for c in search.candidates if c.shrinkage == 1.0]
    assert all(c.stable for c in plain)  # same distribution: thresholds carry over
    assert (search.groups, search.n_groups) == ("halves", 2)  # no categories given
    assert all(math.isnan(c.auroc_attack) for c in search.candidates)  # no attacks given
    assert search.chosen.separation > 0.95 and direction.layer == search.chosen.layer
    assert float(direction.unit.float() @ pm.h) > 0.8
    d = search.to_dict()
    assert json.loads(json.dumps(d)) == d and d["chosen"]["span"] == search.chosen.span


def test_harmless_prompts_of_an_unseen_category_make_every_readout_unstable(planted):
    _, model, _ = planted
    plain = _prompts(30, False, 2)
    # A harmless category in the vocabulary of harm: left out of the fit, its prompts read as
    # harmful, and a threshold set on ordinary calibration prompts flags them, whatever readout.
    edgy = [
        p[:-1] + " " + MARKERS[i % len(MARKERS)] + "?" for i, p in enumerate(_prompts(20, False, 5))
    ]
    fit = (_prompts(40, True, 1), plain + edgy)
    groups = ["chores"] * 15 + ["errands"] * 15 + ["edgy"] * 20
    shift = (_prompts(20, True, 3), _prompts(30, False, 4))
    _, search = search_harmfulness(
        model, fit, shift, groups=groups, layers=(0, 1), shrinkages=(1.0,), target_fpr=0.1
    )
    assert (search.groups, search.n_groups) == ("category", 3)
    assert not any(c.stable for c in search.candidates)
    assert all(c.fpr_unseen > 0.3 for c in search.candidates)
    assert search.rule.startswith("every candidate")
    assert search.chosen.fpr_unseen == min(c.fpr_unseen for c in search.candidates)


def test_errors_say_what_to_do(planted):
    _, model, _ = planted
    fit = (_prompts(8, True, 1), _prompts(8, False, 2))
    with pytest.raises(MonitorError, match="spans"):
        search_harmfulness(model, fit, ([], ["Hi?"]), spans=("everywhere",))
    with pytest.raises(MonitorError, match="shift split"):
        search_harmfulness(model, fit, ([], []))
    with pytest.raises(MonitorError, match="pools"):
        search_harmfulness(model, fit, ([], ["Hi?"]), pools=("everything",))
    with pytest.raises(MonitorError, match="shrinkages"):
        search_harmfulness(model, fit, ([], ["Hi?"]), shrinkages=(0.0,))
    with pytest.raises(MonitorError, match="one label"):
        search_harmfulness(model, fit, ([], ["Hi?"]), groups=["a", "b"])


def test_attacks_on_the_shift_split_score_every_candidate(planted):
    _, model, _ = planted
    fit = (_prompts(40, True, 1), _prompts(40, False, 2))
    shift = (_prompts(20, True, 3), _prompts(30, False, 4))
    attacks = [p + " ~^|~^|" for p in shift[0]]
    _, search = search_harmfulness(
        model, fit, shift, attacks=attacks, layers=(0, 1), shrinkages=(1.0,), target_fpr=0.1
    )
    assert search.n_attacks == 20
    for c in search.candidates:
        assert 0.0 <= c.auroc_attack <= 1.0
        assert 0.0 <= c.tpr_attack <= 1.0
        assert c.separation == min(c.auroc_cv, c.auroc_shift, c.auroc_attack, c.tpr_attack)


def test_the_choice_never_looks_at_the_test_split(planted, tmp_path):
    pm, model, _ = planted
    a = write_monitor_fixtures(tmp_path / "a")
    b = write_monitor_fixtures(tmp_path / "b")
    # Scramble the test split of b: swap the texts of its harmful and harmless test prompts.
    files = {name: [json.loads(x) for x in (b / f"{name}.jsonl").read_text().splitlines()]
             for name in ("harmful", "harmless")}  # fmt: skip
    test_h = [r for r in files["harmful"] if r["split"] == "test"]
    test_l = [r for r in files["harmless"] if r["split"] == "test"]
    for rh, rl in zip(test_h, test_l, strict=True):
        rh["text"], rl["text"] = rl["text"], rh["text"]
    for name, recs in files.items():
        (b / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    config = MonitorConfig(harmfulness_layers=(0, 1))
    ma = fit_monitor(model, load_fixtures(a), pm.refusal_direction(), config)
    mb = fit_monitor(model, load_fixtures(b), pm.refusal_direction(), config)
    assert ma.fit == mb.fit
    assert ma.calibration == mb.calibration


def test_whitening_equals_a_per_site_solve_and_survives_a_constant_site():
    """The whitened fit is S^-1 (mu_h - mu_l) rescaled; a site without variance gives zeros."""
    from refusal_probe.monitor.harmfulness import _fits

    def _fit(h, l_, a):
        return _fits(h, l_, (a,))[a]

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(40, 3, 16, generator=gen, dtype=torch.float64) + 0.5
    l_ = torch.randn(40, 3, 16, generator=gen, dtype=torch.float64)
    h[:, 2], l_[:, 2] = 1.0, 1.0  # a constant site (as layer 0 at template tokens)
    w = _fit(h, l_, 0.3)
    diff = h.mean(0) - l_.mean(0)
    for s in range(2):
        c = torch.cat([h[:, s] - h[:, s].mean(0), l_[:, s] - l_[:, s].mean(0)])
        cov = c.T @ c / (c.shape[0] - 2)
        shrunk = 0.7 * cov + 0.3 * cov.diagonal().mean() * torch.eye(16, dtype=cov.dtype)
        ref = torch.linalg.solve(shrunk, diff[s])
        ref = ref / ref.norm() * diff[s].norm()
        assert torch.allclose(w[s], ref, atol=1e-10)
    assert torch.equal(w[2], torch.zeros(16, dtype=torch.float64))
    # The search fits every shrinkage on one covariance: the same vectors, bit for bit.
    shrinkages = (1.0, 0.3, 0.1)
    for a, v in _fits(h, l_, shrinkages).items():
        assert torch.equal(v, _fit(h, l_, a))


def test_candidates_read_off_pooled_activations_equal_their_own_forward_passes(planted):
    """The search reads averaging spans as projections of pooled activations, and the largest
    projection over the request ends off the same capture: the same numbers a readout's own
    forward pass gives (padding and all), for every layer and span."""
    from refusal_probe.monitor.harmfulness import _direction
    from refusal_probe.monitor.pooled import CAPTURED_SPANS, pooled_activations
    from refusal_probe.monitor.signals import Readout, read_raw

    _, model, _ = planted
    prompts = _prompts(6, True, 7) + [
        "Hi?",
        "Could you please tell me a little more about it?",
        "Name a fruit. Then name a colour! And why is the sky blue? Thanks",  # several ends
    ]
    layers = tuple(range(model.n_layers))
    acts = pooled_activations(model, prompts, layers)
    assert acts.ends.n == len(prompts) and acts.ends.owner.tolist().count(len(prompts) - 1) >= 3
    gen = torch.Generator().manual_seed(1)
    vectors = torch.randn(len(layers), model.d_model, generator=gen, dtype=torch.float64)
    for span in CAPTURED_SPANS:
        projected = acts.read(span, vectors)  # [prompt, site]
        readouts = [
            Readout(
                f"r{j}",
                _direction(model, vectors[j], j, "instruction", 1.0, ("a", "b"), 1, 1),
                span,
            )
            for j in layers
        ]
        raw = read_raw(model, readouts, prompts, batch_size=3)
        for j in layers:
            assert torch.allclose(projected[:, j], raw[f"r{j}"], rtol=1e-4, atol=1e-4), (span, j)
        tail = acts.read(span, vectors, slice(2, None))
        assert torch.equal(tail, projected[2:])


def test_a_span_without_a_pool_is_searched_with_forward_passes(planted):
    _, model, _ = planted
    fit = (_prompts(12, True, 1), _prompts(12, False, 2))
    shift = (_prompts(6, True, 3), _prompts(8, False, 4))
    _, search = search_harmfulness(
        model, fit, shift, layers=(1,), shrinkages=(1.0,), spans=("instruction", "instruction_mean")
    )
    assert {c.span for c in search.candidates} == {"instruction", "instruction_mean"}
    assert all(0.0 <= c.auroc_cv <= 1.0 for c in search.candidates)
