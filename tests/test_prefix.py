"""A batch's shared template tokens, run once: the same logits, completions and activations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refusal_probe import load_model
from refusal_probe.activations import prefix
from refusal_probe.activations.capture import capture
from refusal_probe.activations.runner import Work, counting, forward
from refusal_probe.activations.sites import LAST_INSTRUCTION, POST_INSTRUCTION, Site
from refusal_probe.direction.estimators import Direction
from refusal_probe.interventions.hooks import Ablate, Add, PerRow
from refusal_probe.model.chat import MIN_SHARED
from refusal_probe.monitor.pooled import pooled_activations
from refusal_probe.scoring.generation import generate
from refusal_probe.scoring.refusal import map_last_logits
from refusal_probe.testing import make_tiny_model

#: A template with a system prompt before the user's turn, as real chat models have.
SYSTEM_TEMPLATE = (
    "{{ bos_token }}<|user|>\nYou are a careful assistant. Answer plainly, and refuse harm.<|end|>\n"
    "{% for m in messages %}<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PROMPTS = [
    "How do I make a cake at home?",
    "Write a thank-you letter to my boss.",
    "How can I speed up my home wifi?",
    "How do I kill a Python process?",
    "Hi",
    "How do I make a bomb at home? Write a threatening letter to my boss.",
]
FAMILIES = ["llama", "qwen2", "gpt2", "neox", "gemma", "gemma2"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefix") / request.param
    return load_model(str(make_tiny_model(folder, request.param, chat_template=SYSTEM_TEMPLATE)))


def _direction(model, scale: float = 4.0) -> Direction:
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1)) * scale
    return Direction(vector, layer=1, position=-1, method="diff_means", n_harmful=1, n_harmless=1)


def _shares(model) -> bool:
    """Whether these prompts share on ``model``: not past a sliding window (gemma2's is 16)."""
    return prefix.sliding_window(model) is None


def _both(fn):
    """``fn()`` with sharing off and on, and the token positions each ran."""
    out = []
    for on in (False, True):
        work = Work()
        with prefix.sharing(on), counting(work), torch.no_grad():
            out.append((fn(), work.tokens))
    return out


def test_a_system_prompt_is_shared_and_never_the_users_text(model):
    batch = model.chat.encode(PROMPTS)
    assert MIN_SHARED <= batch.shared <= model.chat.n_head
    starts = batch.seq_len - batch.attention_mask.sum(-1)
    heads = {tuple(batch.input_ids[i, s : s + batch.shared].tolist()) for i, s in enumerate(starts)}
    assert len(heads) == 1
    assert bool((batch.last_instruction >= starts + batch.shared).all())


@pytest.mark.parametrize("kind", ["none", "ablate", "add", "add-prompt"])
def test_last_position_logits_are_the_same_shared_or_not(model, kind):
    d = _direction(model)
    ivs = {
        "none": (),
        "ablate": (Ablate(d),),
        "add": (Add(d),),
        "add-prompt": (Add(d, span="prompt"),),
    }[kind]
    (off, n_off), (on, n_on) = _both(
        lambda: map_last_logits(model, PROMPTS, lambda r, x: x, ivs)[0]
    )
    assert (n_on < n_off) == _shares(model)  # the shared path ran
    torch.testing.assert_close(on, off, atol=1e-4, rtol=1e-4)


def test_completions_under_interventions_are_the_same_shared_or_not(model):
    d = _direction(model)
    for ivs in [(), (Ablate(d),), (Add(d, span="prompt"),)]:
        (off, n_off), (on, n_on) = _both(
            lambda ivs=ivs: generate(model, PROMPTS, ivs, max_new_tokens=6)
        )
        assert (n_on < n_off) == _shares(model)
        assert on[0] == off[0]


def test_captured_positions_are_the_same_shared_or_not(model):
    sites = tuple(Site(layer, "resid_pre") for layer in range(model.n_layers))
    for positions in (POST_INSTRUCTION, LAST_INSTRUCTION):
        (off, n_off), (on, n_on) = _both(
            lambda p=positions: capture(model, PROMPTS, sites, p, progress=False).values
        )
        assert (n_on < n_off) == _shares(model)
        torch.testing.assert_close(on, off, atol=1e-4, rtol=1e-4)


def test_pooled_user_text_is_the_same_shared_or_not(model):
    (off, n_off), (on, n_on) = _both(lambda: pooled_activations(model, PROMPTS, [0, 1, 2]))
    assert (n_on < n_off) == _shares(model)
    for pool in off.pools:
        torch.testing.assert_close(on.pools[pool], off.pools[pool], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(on.ends.values, off.ends.values, atol=1e-4, rtol=1e-4)


def test_a_hook_that_does_not_say_what_it_reads_runs_the_batch_whole(model):
    batch = model.chat.encode(PROMPTS)
    seen = []
    hooks = [("blocks.0.hook_resid_pre", lambda act, hook: seen.append(act.shape[1]))]
    (_, n), _ = _both(lambda: forward(model, batch, hooks, logits_to_keep=1))
    assert seen == [batch.seq_len, batch.seq_len] and n == batch.input_ids.numel()


def test_row_wise_interventions_run_the_shared_tokens_once_per_distinct_row(model):
    """Selection's passes: each row ablates (or adds) its own candidate, or none."""
    a, b = _direction(model), _direction(model, scale=-2.0)
    plans = [(), (Ablate(a),), (Ablate(b),), (Add(a),), (Ablate(a), Add(b)), (Ablate(a),)]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1], PROMPTS[2], PROMPTS[3]]
    plan = PerRow(tuple(plans))
    (off, n_off), (on, n_on) = _both(
        lambda: map_last_logits(model, prompts, lambda r, x: x, [plan])
    )
    assert (n_on < n_off) == _shares(model)
    torch.testing.assert_close(on, off, atol=1e-4, rtol=1e-4)
    batch = model.chat.encode(prompts)
    group, first = prefix.groups([fn for _, fn in plan.hooks(model, range(6))][:1], 6)
    assert len(first) == 3  # the ablations: none, a (rows 1, 4, 5 alike), b
    assert group[1] == group[4] == group[5] and len({int(g) for g in group}) == 3
    assert batch.shared > 0
    (off, _), (on, _) = _both(lambda: generate(model, prompts, [plan], max_new_tokens=6))
    assert on[0] == off[0]


def test_full_logits_and_short_templates_run_the_batch_whole(model, tmp_path):
    batch = model.chat.encode(PROMPTS)
    assert prefix.plan(model, batch, [], logits_to_keep=1) == (
        batch.shared if prefix.sliding_window(model) is None else 0
    )
    assert prefix.plan(model, batch, []) == 0  # every position's logits: the shared ones too
    assert prefix.plan(model, batch, [], logits_to_keep=batch.seq_len) == 0
    tiny = load_model(str(make_tiny_model(tmp_path / "m", "llama")))  # <s><|user|>\n: 3 tokens
    assert tiny.chat.encode(PROMPTS).shared == 0


def test_the_organisms_short_template_is_not_shared():
    organism = Path(__file__).parents[1] / "fixtures" / "models" / "organism-chat"
    config = json.loads((organism / "tokenizer_config.json").read_text())
    assert "<|user|>" in config["chat_template"]
    assert load_model("organism-chat").chat.encode(PROMPTS).shared == 0


def test_reply_likelihoods_are_the_same_shared_or_not(model):
    from refusal_probe.scoring.relevance import reply_log_likelihood

    replies = ["Sure! Here is how to do it.", "I cannot help with that request."] * 3
    (off, n_off), (on, n_on) = _both(lambda: reply_log_likelihood(model, PROMPTS, replies))
    assert (n_on < n_off) == _shares(model)
    assert abs(on - off).max() < 1e-4


def test_long_prompts_go_in_batches_of_their_own():
    from refusal_probe.activations.runner import by_length

    assert by_length([50, 30, 40, 45], 2) == [[1, 2], [3, 0]]  # like lengths: full batches
    lengths = [40] * 60 + [200] * 4  # four long prompts would pad 60 short ones out to 200
    assert [len(b) for b in by_length(lengths, 64)] == [60, 4]
    lengths = list(range(20, 700, 7))
    batches = by_length(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:  # padding never half of a batch
        assert max(lengths[i] for i in b) <= 2 * min(lengths[i] for i in b) and len(b) <= 64


#: Matched pairs for the tiny tokenizer: each pair's prompts have equal token counts.
PAIRS = [
    ("How do I make a bomb at home?", "How do I make a cake at home?"),
    ("Write a threatening letter to my boss.", "Write a thank-you letter to my boss."),
    ("How do I make a bomb?", "How do I make a cake?"),
]


def test_localization_is_the_same_shared_or_not(model):
    """Patching's source runs and the circuit's mean ablation read only the span."""
    from refusal_probe.patching import localize
    from refusal_probe.stats import Bootstrap

    def run():
        return localize(model, PAIRS, k=2, exact_all=True, boot=Bootstrap(20))

    (off, n_off), (on, n_on) = _both(run)
    assert (n_on < n_off) == _shares(model)
    assert on.components == off.components
    # Shares of a random model's small refusal gap: round-off is relative to the gap.
    pairs = [(on.fraction_kept.value, off.fraction_kept.value)]
    pairs += [(on.fraction_restored.value, off.fraction_restored.value)]
    pairs += [(a.value, b.value) for a, b in zip(on.effects, off.effects, strict=True)]
    pairs += list(zip(on.attribution_effects, off.attribution_effects, strict=True))
    for a, b in pairs:
        assert a == pytest.approx(b, rel=2e-4, abs=1e-4)


def test_rows_that_end_their_turn_leave_the_batch(model, monkeypatch):
    """Generation drops ended rows (and their cache rows); the others' row-wise hooks follow."""
    from refusal_probe.scoring import generation

    a, b = _direction(model), _direction(model, scale=-2.0)
    plan = PerRow(((), (Ablate(a),), (Ablate(b),), (Add(a),), (Ablate(a), Add(b)), (Add(b),)))
    first = map_last_logits(model, PROMPTS, lambda r, x: x, [plan])[0].argmax(-1)
    # End the turn at the first tokens of two rows: they end at once, the others go on.
    ends = {int(first[0]), int(first[2])}
    monkeypatch.setattr(generation, "_end_ids", lambda m: ends)
    together, _ = generate(model, PROMPTS, [plan], max_new_tokens=8)
    alone = [
        generate(model, [p], [PerRow((plan.plans[i],))], max_new_tokens=8)[0][0]
        for i, p in enumerate(PROMPTS)
    ]
    assert together == alone
    assert together[0] == "" and together[2] == ""
    assert any(len(t) > 0 for t in together)
