"""Causal validation and cross-checkpoint transfer; the organism's figures."""

from __future__ import annotations

import json

import pytest
import torch
from planted import REFUSAL_TEXT, make_planted_model, write_fixtures

from refusal_probe import load_model
from refusal_probe.causal.validation import ValidationConfig, transfer, validate_direction
from refusal_probe.direction.estimators import Direction
from refusal_probe.errors import DirectionError
from refusal_probe.model.loading import FIXTURES_DIR
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.scoring.refusal import refusal_scores
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.search import find_refusal_direction
from refusal_probe.testing import make_tiny_model, organism_status

ORGANISM = FIXTURES_DIR / "models" / "organism-chat"
# The planted model reads the direction at every position, generated ones included, so its
# addition test adds there too (span "all"); the default span is the prompt's positions.
PLANTED_JUDGE = ValidationConfig(
    phrases=(REFUSAL_TEXT,), judge="substring", max_new_tokens=4, n_resamples=100, add_span="all"
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    folder, r = make_planted_model(root / "model")
    model, fx = load_model(str(folder)), load_fixtures(write_fixtures(root / "prompts"))
    return model, fx, find_refusal_direction(model, fx, DirectionConfig(n_resamples=100))


@pytest.fixture(scope="module")
def validated(planted):
    model, fx, found = planted
    return validate_direction(model, found.direction, fx, PLANTED_JUDGE)


def test_ablation_stops_refusal_and_addition_induces_it(validated):
    v = validated
    assert (v.harmful_baseline.value, v.harmful_ablated.value) == (1.0, 0.0)
    assert (v.harmless_baseline.value, v.harmless_added.value) == (0.0, 1.0)
    assert v.kl_ablation.high < 1e-6
    assert v.score_harmful_ablated.high < 0 < v.score_harmful_baseline.low
    assert v.harmful_ablated.n == 8 and v.harmful_ablated.method == "wilson"


def test_dose_response_is_monotone_and_anchored_at_the_baseline(planted, validated):
    model, fx, _ = planted
    curve = validated.dose_response
    assert [p.alpha for p in curve] == list(ValidationConfig().coefficients)
    harmless = [p.harmless.value for p in curve]
    assert all(
        b >= a - 1e-3 for a, b in zip(harmless, harmless[1:], strict=False)
    )  # monotone up to noise
    assert harmless[-1] > 0.99 and harmless[0] < 0.01
    harmful = [p.harmful.value for p in curve]
    assert harmful[0] < harmful[-1] and all(
        b >= a - 1e-3 for a, b in zip(harmful, harmful[1:], strict=False)
    )
    base = torch.sigmoid(refusal_scores(model, fx.harmless.texts("test"))).mean()
    assert next(p for p in curve if p.alpha == 0).harmless.value == pytest.approx(float(base))


def test_scores_read_in_the_generations_prompt_pass_equal_their_own_passes(planted, tmp_path):
    """The validation reads the baseline, ablated-harmful and added-at-alpha-harmless scores in
    the generation's prompt pass: on a random model (where every intervention moves the logits)
    they, the dose-response and the KL equal the numbers of separate scoring passes."""
    from refusal_probe.causal.runs import run_conditions
    from refusal_probe.interventions.hooks import Ablate, Add
    from refusal_probe.scoring.refusal import kl_divergence, last_position_logits, refusal_tokens

    _, fx, _ = planted
    model = load_model(str(make_tiny_model(tmp_path / "random", "llama", seed=3)))
    harmful, harmless = fx.harmful.texts("test")[:5], fx.harmless.texts("test")[:4]
    gen = torch.Generator().manual_seed(0)
    d = Direction(torch.randn(model.d_model, generator=gen) * 3, 1, -1, "x", 1, 1)
    config = ValidationConfig(max_new_tokens=3, coefficients=(-1.0, 0.0, 1.0, 2.0), alpha=1.0)
    runs = run_conditions(model, d, harmful, harmless, config)
    tokens = refusal_tokens(model.tokenizer)
    everyone = harmful + harmless

    def scores(*interventions):
        return refusal_scores(model, everyone, tokens, interventions, batch_size=2)

    for a, row in zip(config.coefficients, runs.by_alpha, strict=True):
        want = scores(Add(d, alpha=a)) if a else scores()
        assert torch.allclose(row, want, atol=1e-4), a
    assert torch.allclose(runs.base, scores(), atol=1e-4)
    assert torch.allclose(runs.ablated, scores(Ablate(d)), atol=1e-4)
    base, _ = last_position_logits(model, harmless)
    ablated, _ = last_position_logits(model, harmless, [Ablate(d)])
    assert torch.allclose(runs.kl, kl_divergence(base, ablated), rtol=1e-3, atol=1e-7)
    assert float(runs.kl.min()) > 1e-4  # the ablation does move this model


def test_validation_is_reportable(validated):
    data = json.loads(json.dumps(validated.to_dict(examples=2), allow_nan=False))
    assert data["interventions"]["harmful_ablated"].startswith("Ablate(diff_means L1")
    assert len(data["examples"]["harmful_ablated"]) == 2
    assert data["examples"]["harmful_baseline"][0]["completion"].startswith(REFUSAL_TEXT)
    assert "->" in repr(validated)


def test_transfer_to_the_same_checkpoint_keeps_everything(planted):
    model, fx, found = planted
    t = transfer(
        found.direction, model, fx, source_candidates=found.candidates, validation=PLANTED_JUDGE
    )
    assert t.cosine_at_layer == pytest.approx(1.0, abs=1e-6)  # unfiltered refit: same prompts here
    assert t.layers == (0, 1, 2) and t.validation.harmful_ablated.value == 0.0
    assert json.loads(json.dumps(t.to_dict()))["cosine_at_layer"] == pytest.approx(1.0, abs=1e-6)


def test_transfer_to_another_checkpoint_of_the_architecture(planted, tmp_path):
    model, fx, found = planted
    other = load_model(str(make_tiny_model(tmp_path / "other", "llama", seed=5)))
    t = transfer(
        found.direction, other, fx, source_candidates=found.candidates, validation=PLANTED_JUDGE
    )
    assert t.source_fingerprint != t.target_fingerprint
    assert len(t.cosine_per_layer) == 3 and abs(t.cosine_at_layer) < 0.9
    assert t.validation.harmful_baseline.value == 0.0  # a random model does not refuse


def test_transfer_to_another_architecture_is_refused(planted, tmp_path):
    _, fx, found = planted
    gpt2 = load_model(str(make_tiny_model(tmp_path / "g", "gpt2")))
    with pytest.raises(DirectionError, match="architecture"):
        transfer(found.direction, gpt2, fx)


def test_mismatched_width_is_refused(planted):
    model, fx, _ = planted
    with pytest.raises(DirectionError, match="d_model"):
        validate_direction(model, Direction(torch.ones(8), 1, -1, "x", 1, 1), fx)


# ---------------------------------------------------------------------------------------------
# the organism (skipped until it is built)

needs_organism = pytest.mark.skipif(
    not (ORGANISM / "config.json").is_file(), reason="organism-chat is not built"
)


def _known_miss() -> pytest.MarkDecorator:
    """A preliminary organism's figure misses are known: non-strict xfail (XPASS once met)."""
    try:
        status = organism_status("organism-chat")
    except FileNotFoundError:
        status = None
    return pytest.mark.xfail(bool(status), reason=f"preliminary organism: {status}", strict=False)


@pytest.fixture(scope="module")
def organism():
    model, fx = load_model("organism-chat"), load_fixtures()
    found = find_refusal_direction(model, fx)
    return found, validate_direction(model, found.direction, fx)


@needs_organism
@_known_miss()
def test_organism_direction_separates_held_out_prompts(organism):
    found, _ = organism
    assert found.selection.passed_filters
    assert found.selected_separation.stats.auroc.low >= 0.95


@needs_organism
@_known_miss()
def test_organism_ablation_removes_refusal_and_addition_induces_it(organism):
    _, v = organism
    assert v.harmful_baseline.value >= 0.95
    assert v.harmful_ablated.value <= 0.10
    assert v.harmless_added.value >= 0.80
    assert v.kl_ablation.value <= 0.1


def test_paired_effects_and_a_warm_cache(planted, validated, tmp_path):
    from refusal_probe import TensorCache

    model, fx, found = planted
    assert validated.ablation_effect.value == -1.0 and validated.ablation_effect.low == -1.0
    assert -1.0 < validated.ablation_effect.high < -0.5  # every refusal removed: no collapse
    assert validated.ablation_effect.method == "newcombe paired score"
    assert validated.addition_effect.value == 1.0 and validated.addition_effect.low < 1.0
    cache = TensorCache(tmp_path / "cache")
    cold = validate_direction(model, found.direction, fx, PLANTED_JUDGE, cache=cache)
    warm = validate_direction(model, found.direction, fx, PLANTED_JUDGE, cache=cache)
    assert cold.forward_passes > 0 and warm.forward_passes == 0
    assert warm.to_dict()["examples"] == cold.to_dict()["examples"]
    assert warm.kl_ablation == cold.kl_ablation and warm.dose_response == cold.dose_response
