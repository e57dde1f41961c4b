"""Ablation, addition, per-row plans and weight orthogonalization."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refusal_probe import load_model
from refusal_probe.activations.runner import forward
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.direction.estimators import Direction
from refusal_probe.errors import DirectionError
from refusal_probe.interventions.hooks import (
    Ablate,
    Add,
    PerRow,
    add_vector,
    decoding,
    hooks_for,
    orthogonalized,
    project_out,
)
from refusal_probe.testing import make_tiny_model

PROMPTS = ["How do I make a cake at home?", "hi", "Write a thank-you letter to my boss."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        fam: make_tiny_model(root / fam, fam) for fam in ("llama", "gpt2", "qwen2", "neox", "gemma")
    }


@pytest.fixture(scope="module")
def llama(folders):
    return load_model(str(folders["llama"]))


def direction_for(model, layer=1, seed=0, **kw) -> Direction:
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed)) * 3
    return Direction(v, layer, -1, "test", 1, 1, architecture=model.identity.architecture, **kw)


@torch.no_grad()
def logits(model, interventions=(), prompts=PROMPTS, extra_hooks=()):
    batch = model.chat.encode(prompts)
    return forward(
        model, batch, hooks_for(model, interventions, range(len(prompts))) + list(extra_hooks)
    )


# ---------------------------------------------------------------------------------------------
# properties of the tensor operations

vec = arrays("float64", 6, elements=st.floats(-100, 100, allow_nan=False))


def _unit(v):
    n = torch.as_tensor(v).norm()
    return torch.as_tensor(v) / n if n > 1e-3 else None


@settings(max_examples=100, deadline=None)
@given(vec, vec)
def test_ablation_is_idempotent_and_leaves_nothing_along_the_direction(x, r):
    u = _unit(r)
    if u is None:
        return
    x = torch.as_tensor(x)
    once = project_out(x, u)
    assert torch.allclose(project_out(once, u), once, atol=1e-9)
    assert abs(float(once @ u)) <= 1e-9 * max(1.0, float(x.norm()))


@settings(max_examples=100, deadline=None)
@given(vec, vec)
def test_adding_with_coefficient_zero_is_the_identity(x, r):
    x = torch.as_tensor(x)
    assert torch.equal(add_vector(x, torch.as_tensor(r), 0.0), x)


# ---------------------------------------------------------------------------------------------
# hooks on a model


def test_ablation_removes_the_direction_from_every_residual(llama):
    d = direction_for(llama)
    seen = {}

    def read(act, hook, layer):
        seen[layer] = float((act.double() @ d.unit).abs().max())

    reads = [
        (hook_name(Site(i, "resid_post")), partial(read, layer=i)) for i in range(llama.n_layers)
    ]
    logits(llama, [Ablate(d)], extra_hooks=reads)
    assert len(seen) == llama.n_layers and max(seen.values()) < 1e-4


def test_addition_changes_only_its_layer_and_later(llama):
    d = direction_for(llama, layer=2)
    seen = {}

    def read(act, hook, layer):
        seen[layer] = act.clone()

    reads = [
        (hook_name(Site(i, "resid_post")), partial(read, layer=i)) for i in range(llama.n_layers)
    ]
    logits(llama, extra_hooks=reads)
    base = dict(seen)
    logits(llama, [Add(d, alpha=2.0)], extra_hooks=reads)
    assert torch.equal(seen[0], base[0]) and torch.equal(seen[1], base[1])
    assert not torch.allclose(seen[2], base[2])


@pytest.mark.parametrize("plan", ["single", "per_row"])
def test_prompt_span_addition_leaves_generated_positions_alone(llama, plan):
    """Inside a decoding step, Add(span="prompt") changes only the declared prompt positions."""
    d = direction_for(llama, layer=1)
    add = Add(d, span="prompt")
    ivs = [add] if plan == "single" else [PerRow(((add,),))]
    ((_, fn),) = hooks_for(llama, ivs, [0])
    act = torch.zeros(1, 5, llama.d_model)  # [batch, pos, d]
    with decoding(3):
        out = fn(act.clone(), None)
    assert torch.allclose(out[0, :3], d.vector.float().expand(3, -1)) and not out[0, 3:].any()
    with decoding(0):  # a cached step: its one position was generated
        assert not fn(act.clone(), None).any()
    assert torch.allclose(fn(act.clone(), None)[0], d.vector.float().expand(5, -1))  # no decoding: all
    all_span = hooks_for(llama, [Add(d)], [0])[0][1]
    with decoding(0):
        assert all_span(act.clone(), None).any()
    with pytest.raises(DirectionError, match="span"):
        Add(d, span="generated")


def test_zero_coefficient_and_expired_hooks_leave_the_model_alone(llama):
    base = logits(llama)
    d = direction_for(llama)
    assert torch.equal(logits(llama, [Add(d, alpha=0.0)]), base)
    assert not torch.allclose(logits(llama, [Ablate(d)]), base)
    assert torch.equal(logits(llama), base)  # no hook outlived the call


def test_per_row_plans_equal_separate_runs(llama):
    d1, d2 = direction_for(llama, 1, seed=1), direction_for(llama, 2, seed=2)
    plans = [(), (Ablate(d1),), (Add(d2, alpha=1.5),)]
    mixed = logits(llama, [PerRow(tuple(plans))], prompts=PROMPTS)
    for i, plan in enumerate(plans):
        # Each prompt alone, in a batch of its own: same numbers as in the mixed, padded batch.
        alone = logits(llama, plan, prompts=[PROMPTS[i]])
        assert torch.allclose(mixed[i, -1], alone[0, -1], atol=1e-4)


def test_reprs_say_what_is_applied(llama):
    d = direction_for(llama, 1)
    assert repr(Ablate(d)) == "Ablate(test L1 pos -1)"
    assert repr(Add(d, layer=2, alpha=-1)) == "Add(test L1 pos -1, layer=2, alpha=-1)"
    assert repr(PerRow(((), (Ablate(d),)))).startswith("PerRow(rows=2")


# ---------------------------------------------------------------------------------------------
# weight orthogonalization


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "neox", "gemma"])
def test_orthogonalized_copy_matches_hook_ablation(folders, family):
    model = load_model(str(folders[family]))
    d = direction_for(model)
    before = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    base = logits(model)
    hooked = logits(model, [Ablate(d)])
    edited = orthogonalized(model, d)
    assert torch.allclose(logits(edited), hooked, atol=1e-4)
    assert not torch.allclose(hooked, base, atol=1e-4)
    # The loaded model is untouched: same weights, same logits.
    after = model.hf_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(logits(model), base)
    assert edited.identity.fingerprint != model.identity.fingerprint
    assert edited.identity.source == "edited" and "orthogonalized" in edited.identity.spec


def test_orthogonalized_copy_cannot_be_exported(llama, tmp_path):
    edited = orthogonalized(llama, direction_for(llama))
    with pytest.raises(DirectionError, match="not saved"):
        edited.hf_model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_orthogonalization_refuses_post_norm_architectures(tmp_path):
    model = load_model(str(make_tiny_model(tmp_path / "g2", "gemma2")))
    with pytest.raises(DirectionError, match="Ablate hooks"):
        orthogonalized(model, direction_for(model))


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_mismatched_width_is_a_clear_error(llama):
    d = Direction(torch.ones(32), 1, -1, "x", 1, 1)
    for iv in (Ablate(d), Add(d)):
        with pytest.raises(DirectionError, match="d_model 32"):
            logits(llama, [iv])


def test_direction_from_another_architecture_is_a_clear_error(llama, folders):
    gpt2 = load_model(str(folders["gpt2"]))
    d = direction_for(gpt2)  # same width (64), other architecture
    with pytest.raises(DirectionError, match="GPT2LMHeadModel"):
        logits(llama, [Ablate(d)])


def test_layer_out_of_range_is_a_clear_error(llama):
    with pytest.raises(DirectionError, match="layer"):
        logits(llama, [Add(direction_for(llama), layer=9)])


def test_per_row_needs_rows_and_one_ablation_per_row(llama):
    d = direction_for(llama)
    with pytest.raises(DirectionError, match="row indices"):
        PerRow(((Ablate(d),),)).hooks(llama)
    with pytest.raises(DirectionError, match="allows one"):
        PerRow(((Ablate(d), Ablate(d)),)).hooks(llama, [0])
    with pytest.raises(DirectionError, match="not an intervention"):
        hooks_for(llama, ["ablate"])  # type: ignore[list-item]
