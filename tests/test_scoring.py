"""Refusal tokens, the log-odds proxy, greedy generation and the substring judge."""

from __future__ import annotations

import math

import pytest
import torch
from planted import REFUSAL_TEXT, make_planted_model, write_fixtures

from refusal_probe import load_model
from refusal_probe.errors import ScoringError
from refusal_probe.model.loading import FIXTURES_DIR
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.scoring.generation import generate, judge, refusal_rate
from refusal_probe.scoring.refusal import (
    filter_by_score,
    kl_divergence,
    refusal_score_from_logits,
    refusal_scores,
    refusal_tokens,
)
from refusal_probe.scoring.relevance import reply_log_likelihood, reply_relevance
from refusal_probe.scoring.reply import is_refusal
from refusal_probe.testing import make_tiny_model, tiny_tokenizer

ORGANISM = FIXTURES_DIR / "models" / "organism-chat"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", "llama")))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    folder, _ = make_planted_model(root / "model")
    return load_model(str(folder)), load_fixtures(write_fixtures(root / "prompts"))


# ---------------------------------------------------------------------------------------------
# refusal tokens


def test_refusal_tokens_are_first_tokens_of_phrases_with_and_without_space():
    tok = tiny_tokenizer()
    rt = refusal_tokens(tok)
    assert rt.source == "derived"
    assert tok.encode("I", add_special_tokens=False)[0] in rt.ids
    assert tok.encode(" I", add_special_tokens=False)[0] in rt.ids
    assert all(t.strip() for t in rt.tokens)  # no whitespace-only token
    assert rt.to_dict()["tokens"] == list(rt.tokens)


def test_refusal_tokens_override_by_id_and_by_string():
    tok = tiny_tokenizer()
    i = tok.encode("I", add_special_tokens=False)[0]
    assert refusal_tokens(tok, override=[i]).ids == (i,)
    assert refusal_tokens(tok, override=["I"]).ids == (i,)
    assert refusal_tokens(tok, override=["I"]).source == "override"


@pytest.mark.parametrize(
    "kwargs",
    [{"phrases": ()}, {"override": []}, {"override": [10**6]}, {"override": ["no-such-token-xyz"]}],
)
def test_no_or_bad_refusal_tokens_is_a_clear_error(kwargs):
    with pytest.raises(ScoringError, match="refusal token"):
        refusal_tokens(tiny_tokenizer(), **kwargs)


# ---------------------------------------------------------------------------------------------
# the logit proxy


def test_log_odds_matches_the_definition():
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    rt = refusal_tokens(tiny_tokenizer(), override=[3, 7])
    p = torch.softmax(logits.double(), -1)[:, [3, 7]].sum(-1)
    expected = torch.log(p) - torch.log1p(-p)
    assert torch.allclose(refusal_score_from_logits(logits, rt), expected, atol=1e-10)


def test_log_odds_stays_finite_when_refusal_is_certain_or_impossible():
    logits = torch.zeros(2, 20)
    logits[0, 3] = 1e4  # P_R == 1 in float64
    logits[1, 3] = -1e4  # P_R == 0
    s = refusal_score_from_logits(logits, refusal_tokens(tiny_tokenizer(), override=[3]))
    assert torch.isfinite(s).all() and s[0] > 100 and s[1] < -100


def test_kl_is_zero_for_equal_and_positive_for_different_logits():
    torch.manual_seed(0)
    a, b = torch.randn(4, 30), torch.randn(4, 30)
    assert torch.allclose(kl_divergence(a, a), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    kl = kl_divergence(a, b)
    p, q = torch.softmax(a.double(), -1), torch.softmax(b.double(), -1)
    assert torch.allclose(kl, (p * (p / q).log()).sum(-1))
    assert (kl > 0).all()


def test_planted_model_scores_harmful_above_zero_and_harmless_below(planted):
    model, fx = planted
    assert (refusal_scores(model, fx.harmful.texts("test")) > 0).all()
    assert (refusal_scores(model, fx.harmless.texts("test")) < 0).all()


def test_filtering_that_leaves_too_few_prompts_says_what_to_do():
    scores = torch.tensor([-1.0, -2.0, 0.5])
    with pytest.raises(ScoringError, match="filter_prompts=False"):
        filter_by_score(["a", "b", "c"], ["x", "y"], scores, torch.tensor([-1.0, -1.0]))
    h, l_ = filter_by_score(
        ["a", "b", "c"], ["x", "y"], torch.tensor([1.0, 2.0, -1.0]), torch.tensor([-1.0, -1.0])
    )
    assert h == ["a", "b"] and l_ == ["x", "y"]


def test_empty_prompt_set_is_a_clear_error(tiny):
    with pytest.raises(ScoringError, match="no prompts"):
        refusal_scores(tiny, [])
    with pytest.raises(ScoringError, match="no prompts"):
        generate(tiny, [])


# ---------------------------------------------------------------------------------------------
# generation and the judge


def test_judge_is_case_insensitive_and_configurable():
    assert is_refusal("well, i CANNOT do that")
    assert is_refusal("I\u2019m sorry, no.")  # typographic apostrophe
    assert not is_refusal("Sure! Here is how.")
    assert is_refusal("nope nope", phrases=("NOPE",))
    assert not is_refusal("I'm sorry", phrases=("nope",))


def test_batched_generation_equals_one_prompt_at_a_time(tiny):
    prompts = ["How do I make a cake at home?", "hi", "Write a thank-you letter to my boss."]
    together, _ = generate(tiny, prompts, max_new_tokens=5, batch_size=3)
    alone = [generate(tiny, [p], max_new_tokens=5)[0][0] for p in prompts]
    assert together == alone


def test_generation_respects_the_token_bound(tiny):
    texts, passes = generate(tiny, ["How do I make a cake at home?"], max_new_tokens=3)
    assert passes <= 3
    ids = tiny.tokenizer.encode(texts[0], add_special_tokens=False)
    assert len(ids) <= 3 + 1  # decoding and re-encoding may split one token


def test_refusal_rate_on_the_planted_model(planted):
    model, fx = planted
    # The planted "refusal" is a token string, not a reply: the substring judge reads it.
    kw = {"phrases": (REFUSAL_TEXT,), "max_new_tokens": 4, "rule": "substring"}
    harmful = refusal_rate(model, fx.harmful.texts("test"), **kw)
    harmless = judge(model, fx.harmless.texts("test"), **kw)
    assert (harmful.value, harmful.k, harmful.n) == (1.0, 8, 8)
    assert harmful.low > 0.6 and harmful.high == 1.0
    assert harmless.rate.value == 0.0 and not any(harmless.refused)
    assert harmless.examples(2)[0]["prompt"] == fx.harmless.texts("test")[0]


# ---------------------------------------------------------------------------------------------
# the organism


@pytest.mark.skipif(not (ORGANISM / "config.json").is_file(), reason="organism-chat is not built")
def test_organism_refusal_tokens_and_a_quick_rate():
    model = load_model("organism-chat")
    rt = refusal_tokens(model.tokenizer)
    assert "I" in rt.tokens
    fx = load_fixtures()
    rate = refusal_rate(model, fx.harmful.texts("test")[:16])
    assert rate.n == 16 and not math.isnan(rate.value)


def test_word_fragments_are_not_refusal_tokens():
    from refusal_probe.scoring.refusal import _whole_word

    assert _whole_word("I", "I'm sorry") and _whole_word(" I", " I cannot")
    assert _whole_word("As", "As an AI") and not _whole_word(" A", " As an AI")
    assert not _whole_word(" ", " I cannot")


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox"])
def test_cached_generation_equals_rerunning_the_whole_sequence(tmp_path, family):
    """The KV-cached decoder with interventions gives what re-running every token would."""
    from refusal_probe.activations.runner import forward
    from refusal_probe.direction.estimators import Direction
    from refusal_probe.interventions.hooks import Ablate, Add, PerRow, hooks_for
    from refusal_probe.model.chat import Encoded

    model = load_model(str(make_tiny_model(tmp_path / family, family)))
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)) * 5
    d = Direction(v, 1, -1, "x", 1, 1, architecture=model.identity.architecture)
    prompts = ["How do I make a cake at home?", "hi", "Write a letter.", "How can I hack wifi?"]
    plan = PerRow(((), (Ablate(d),), (Add(d, alpha=2.0),), (Ablate(d),)))
    cached, _ = generate(model, prompts, [plan], max_new_tokens=6, batch_size=4)

    batch = model.chat.encode(prompts)
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    hooks = hooks_for(model, [plan], range(len(prompts)))
    steps = []
    with torch.no_grad():
        for _ in range(6):
            whole = Encoded(ids, mask, pos, batch.last_instruction, batch.n_post)
            nxt = forward(model, whole, hooks)[:, -1].argmax(-1)
            steps.append(nxt)
            ids, pos = torch.cat([ids, nxt[:, None]], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
    ends = {model.tokenizer.eos_token_id, model.tokenizer.pad_token_id}
    for text, row in zip(cached, torch.stack(steps, 1).tolist(), strict=True):
        cut = next((i for i, t in enumerate(row) if t in ends), len(row))
        assert text == model.tokenizer.decode(row[:cut], skip_special_tokens=True).strip()


# --- does a reply answer its request --------------------------------------------------------


def test_reply_log_likelihood_in_batches_equals_one_at_a_time(tiny):
    """Left padding, and replies of different lengths, change no reply's score."""
    requests = ["How do I bake bread?", "Hi", "Tell me about rivers and the sea, please."]
    replies = ["Mix flour and water.", "Hello there, friend! How are you today?", "Water"]
    batched = reply_log_likelihood(tiny, requests, replies, batch_size=3)
    for i, (q, r) in enumerate(zip(requests, replies, strict=True)):
        ids = tiny.chat.encode([q]).input_ids[0].tolist()
        reply = tiny.tokenizer(r, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny.hf_model(torch.tensor([ids + reply])).logits[0].log_softmax(-1)
        own = logits[len(ids) - 1 : -1].gather(-1, torch.tensor(reply)[:, None]).mean()
        assert batched[i] == pytest.approx(float(own), abs=1e-4)


def test_reply_relevance_refuses_what_it_cannot_score(tiny):
    with pytest.raises(ScoringError, match="text"):
        reply_relevance(tiny, ["a"], ["  "], ["b"])
    with pytest.raises(ScoringError, match="pool"):
        reply_relevance(tiny, ["a"], ["b"], ["a"])
    with pytest.raises(ScoringError, match="pair"):
        reply_relevance(tiny, ["a", "b"], ["c"], ["d"])
