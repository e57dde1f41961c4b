"""Candidate scoring, the filters, and the one-call pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from planted import make_planted_model, write_fixtures

from refusal_probe import load_model
from refusal_probe.direction.estimators import Candidates
from refusal_probe.direction.separation import cosine
from refusal_probe.errors import DirectionError, ScoringError
from refusal_probe.interventions.hooks import Ablate, Add
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.scoring.refusal import (
    kl_divergence,
    last_position_logits,
    refusal_scores,
    refusal_tokens,
)
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.search import find_refusal_direction
from refusal_probe.selection.selection import score_candidates
from refusal_probe.testing import make_tiny_model

FAST = DirectionConfig(n_resamples=100)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    folder, r = make_planted_model(root / "model")
    return load_model(str(folder)), load_fixtures(write_fixtures(root / "prompts")), r


@pytest.fixture(scope="module")
def found(planted):
    model, fx, _ = planted
    return find_refusal_direction(model, fx, FAST)


def test_the_planted_direction_is_found(planted, found):
    _, _, r = planted
    d = found.direction
    assert d.layer == 1  # layer 0 has no signal, layer 2 is past floor(0.8 * 3)
    assert float(d.unit @ r.double()) >= 0.99
    assert d.method == "diff_means" and d.n_harmful == 12 and d.n_harmless == 12
    assert found.selection.passed_filters
    assert found.selected_separation.stats.auroc.low == 1.0


def test_the_whole_grid_is_kept_with_reasons(found):
    grid = found.selection.grid
    assert len(grid) == 3 * 4  # layers x post-instruction positions
    assert {c.discarded for c in grid if c.layer == 0} == {frozenset({"zero"})}
    assert all("layer" in c.discarded for c in grid if c.layer == 2)
    assert all(c.passed for c in grid if c.layer == 1)
    assert all(c.induce > 0 and c.kl < 1e-6 for c in grid if c.layer == 1)
    assert found.selection.chosen.bypass < 0 < found.selection.baseline_harmful


def test_batching_cuts_forward_passes(found):
    s = found.selection
    assert s.forward_passes < s.reference_forward_passes
    assert found.forward_passes["selection_reference"] == s.reference_forward_passes


def test_batched_scores_equal_one_candidate_at_a_time(planted, found):
    """The stacked (PerRow) passes give the scores separate passes would give."""
    model, fx, _ = planted
    h, l_ = fx.harmful.texts("val"), fx.harmless.texts("val")
    tokens = refusal_tokens(model.tokenizer)
    for c in found.selection.grid[4:6]:
        d = found.candidates.direction(c.layer, c.position)
        assert c.bypass == pytest.approx(
            float(refusal_scores(model, h, tokens, [Ablate(d)]).mean()), abs=1e-4
        )
        assert c.induce == pytest.approx(
            float(refusal_scores(model, l_, tokens, [Add(d)]).mean()), abs=1e-4
        )
        base, _ = last_position_logits(model, l_)
        ablated, _ = last_position_logits(model, l_, [Ablate(d)])
        assert c.kl == pytest.approx(float(kl_divergence(base, ablated).mean()), abs=1e-6)


def test_result_is_reportable(found):
    data = json.loads(json.dumps(found.to_dict(), allow_nan=False))  # strict JSON
    assert data["direction"]["layer"] == 1
    assert len(data["separation"]) == 3 and "auroc" in data["selected_separation"]
    assert data["prompt_counts"]["fit"]["harmful"] == [12, 12]
    assert data["refusal_tokens"]["source"] == "derived"
    assert len(data["alternative"]["cosine_with_diff_means"]) == 3
    assert "AUROC" in repr(found)


def test_alternative_estimator_agrees_on_the_planted_model(found):
    assert found.alternative_cosine[1] > 0.99
    assert cosine(found.direction, found.candidates.direction(1, -1)) > 0.99


def test_when_no_candidate_passes_none_is_chosen_and_validation_separation_decides(tmp_path):
    model = load_model(str(make_tiny_model(tmp_path / "m", "llama")))
    fx = load_fixtures(write_fixtures(tmp_path / "p"))
    res = find_refusal_direction(
        model, fx, DirectionConfig(filter_prompts=False, n_resamples=50, alternative=False)
    )
    assert not res.selection.passed_filters and res.selection.chosen is None
    assert res.selection.to_dict()["chosen"] is None and "no causal direction" in repr(res)
    # the reported direction is the best separator of the validation split, not a bypass winner
    assert res.chosen_by == "validation_separation"
    cell = {(la, p): a for la, p, a in res.validation_auroc}
    assert cell[(res.direction.layer, res.direction.position)] == max(cell.values())
    nonzero = [c for c in res.selection.grid if "zero" not in c.discarded]
    assert len(res.validation_auroc) == len(nonzero)
    assert len(res.projections["harmful"]) == len(fx.harmful.texts("test"))
    assert res.alternative == () and res.alternative_cosine == ()


def test_a_model_that_never_refuses_gives_a_clear_filtering_error(tmp_path):
    model = load_model(str(make_tiny_model(tmp_path / "m", "llama")))
    fx = load_fixtures(write_fixtures(tmp_path / "p"))
    with pytest.raises(ScoringError, match="filter_prompts=False"):
        find_refusal_direction(model, fx, FAST)


def test_empty_split_and_empty_sets_are_clear_errors(planted, found, tmp_path):
    model, fx, _ = planted
    folder = write_fixtures(tmp_path / "p")
    for name in ("harmful.jsonl", "harmless.jsonl"):  # move every val prompt to train
        path = folder / name
        path.write_text(path.read_text().replace('"split": "val"', '"split": "train"'))
    with pytest.raises(DirectionError, match="split 'val' has 0 harmful"):
        find_refusal_direction(model, load_fixtures(folder), FAST)
    with pytest.raises(DirectionError, match="both classes"):
        score_candidates(model, found.candidates, [], ["x"], refusal_tokens(model.tokenizer))


def test_zero_only_grids_cannot_be_selected(planted, found):
    model, fx, _ = planted
    c = found.candidates
    zero = Candidates(
        torch.zeros_like(c.vectors), c.layers, c.offsets, c.method, 1, 1, "a", "b", "fp"
    )
    with pytest.raises(DirectionError, match="zero or scored NaN"):
        score_candidates(
            model,
            zero,
            fx.harmful.texts("val"),
            fx.harmless.texts("val"),
            refusal_tokens(model.tokenizer),
        )


def test_a_smaller_grid_costs_fewer_passes_and_keeps_the_skipped_cells(planted, found):
    model, fx, r = planted
    lean = find_refusal_direction(
        model, fx, DirectionConfig(n_resamples=50, positions=(-1,), score_late_layers=False)
    )
    grid = lean.selection.grid
    assert [(c.layer, c.position) for c in grid] == [(0, -1), (1, -1), (2, -1)]
    assert math.isnan(grid[2].bypass) and grid[2].discarded == {"layer"}
    assert lean.direction.layer == 1 and float(lean.direction.unit @ r.double()) >= 0.99
    assert lean.selection.forward_passes <= found.selection.forward_passes
    assert lean.candidates.offsets == (-1,) and len(lean.alternative) == 3


def test_a_warm_cache_runs_no_forward_pass_and_gives_the_same_result(planted, tmp_path):
    from refusal_probe import TensorCache

    model, fx, _ = planted
    cache = TensorCache(tmp_path / "cache")
    cold = find_refusal_direction(model, fx, FAST, cache=cache)
    warm = find_refusal_direction(model, fx, FAST, cache=cache)
    assert cold.selection.forward_passes > 0 and cold.forward_passes["filter"] > 0
    assert warm.selection.forward_passes == 0 and warm.forward_passes["filter"] == 0
    assert warm.selection.grid == cold.selection.grid
    assert torch.equal(warm.direction.vector, cold.direction.vector)


def test_split_texts_samples_every_category_not_the_files_first_prompts():
    """A file sorted by category gives a stratified, seeded sample in file order."""
    from pathlib import Path

    from refusal_probe.prompts.loaded import prompt_set
    from refusal_probe.prompts.sets import Fixtures, Prompt
    from refusal_probe.selection.search import split_texts

    def side(name: str, categories: list[str]) -> list[Prompt]:
        return [Prompt(f"{name}{c}{i}", f"{name} {c} {i}", c, "val")
                for c in categories for i in range(8)]  # fmt: skip

    harmful, harmless = side("h", ["a", "b", "c", "d"]), side("l", ["w", "x", "y", "z"])
    fx = Fixtures(Path("."), prompt_set("harmful", harmful), prompt_set("harmless", harmless))
    h, l_ = split_texts(fx, "val", 8)
    assert len(h) == len(l_) == 8
    assert {t.split()[1] for t in h} == {"a", "b", "c", "d"}  # two of each, not the first 8 "a"
    assert {t.split()[1] for t in l_} == {"w", "x", "y", "z"}
    order = [p.text for p in harmful]
    assert h == sorted(h, key=order.index)  # file order kept
    assert split_texts(fx, "val", 8) == (h, l_)  # seeded
    assert split_texts(fx, "val") == (order, [p.text for p in harmless])  # no n: all
