"""Chat formatting: post-instruction spans and last-instruction tokens under several templates."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refusal_probe import PLAIN_TEMPLATE, ChatFormat, ChatFormatError
from refusal_probe.model.chat import chat_format_for
from refusal_probe.testing import TINY_CHAT_TEMPLATE, tiny_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A default system prompt in the prefix, as SmolLM2's and Qwen's templates add.
CHATML_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}" + CHATML
)
# Llama-2 style: the suffix is plain text, no special tokens.
INST = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"

# template -> (the text after the user's instruction, its length in tokens of the tiny vocabulary)
TEMPLATES = {
    "tiny": (TINY_CHAT_TEMPLATE, "<|end|>\n<|assistant|>\n"),
    "chatml": (CHATML, "<|im_end|>\n<|im_start|>assistant\n"),
    "chatml_system": (CHATML_SYSTEM, "<|im_end|>\n<|im_start|>assistant\n"),
    "inst": (INST, " [/INST]"),
    "plain": (None, "\n\n### Response:\n"),
}

INSTRUCTIONS = [
    "How do I make a cake at home?",
    "hi",
    "Write a thank-you letter to my boss, and make it warm but short.",
    "kill a Python process",
]


def _tokenizer(template: str | None):
    tok = tiny_tokenizer(template)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
        replace_extra_special_tokens=False,
    )
    return tok


@pytest.fixture(params=sorted(TEMPLATES))
def fmt(request) -> tuple[ChatFormat, str]:
    template, suffix = TEMPLATES[request.param]
    return chat_format_for(_tokenizer(template)), suffix


def test_post_instruction_span_is_the_template_suffix(fmt):
    chat, suffix = fmt
    tok = chat.tokenizer
    assert chat.suffix == suffix
    assert chat.n_post == len(tok(suffix, add_special_tokens=False)["input_ids"])
    batch = chat.encode(INSTRUCTIONS)
    width = batch.seq_len
    for i, text in enumerate(INSTRUCTIONS):
        assert tok.decode(batch.input_ids[i, -chat.n_post :]) == suffix
        last = int(batch.last_instruction[i])
        assert last == width - chat.n_post - 1
        assert text.endswith(tok.decode(batch.input_ids[i, last]).lstrip())
        # The unpadded row is exactly the tokenized formatted prompt.
        ids = tok(chat.format(text), add_special_tokens=False)["input_ids"]
        n_pad = width - len(ids)
        assert batch.input_ids[i, n_pad:].tolist() == ids
        assert batch.attention_mask[i].tolist() == [0] * n_pad + [1] * len(ids)
        assert batch.position_ids[i, n_pad:].tolist() == list(range(len(ids)))


def test_span_lengths_differ_by_template():
    n = {name: chat_format_for(_tokenizer(t)).n_post for name, (t, _) in TEMPLATES.items()}
    assert n["tiny"] == 4  # <|end|> \n <|assistant|> \n
    assert (
        n["chatml"] == n["chatml_system"] > 4
    )  # "assistant" is several tokens in the tiny vocabulary
    assert n["plain"] == 15 and n["inst"] >= 2


def test_kind_and_template_hash():
    plain = chat_format_for(_tokenizer(None))
    assert plain.kind == "plain" and plain.format("x") == "<s>" + PLAIN_TEMPLATE.format(
        instruction="x"
    )
    a, b = chat_format_for(_tokenizer(CHATML)), chat_format_for(_tokenizer(INST))
    assert a.kind == b.kind == "model"
    assert len({plain.template_sha256, a.template_sha256, b.template_sha256}) == 3
    override = ChatFormat(_tokenizer(CHATML), template=INST)
    assert override.template_sha256 == b.template_sha256 and override.suffix == " [/INST]"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.text(alphabet="abcdefghij klmno?!.,'\n", min_size=1, max_size=40).filter(str.strip),
        min_size=1,
        max_size=5,
    )
)
def test_span_property_any_instruction(texts):
    """With a special token right after the user's text nothing can merge across the boundary."""
    chat = _CHATML_FMT
    batch = chat.encode(texts)
    tail = batch.input_ids[:, -chat.n_post :]
    assert (tail == tail[0]).all()
    assert chat.tokenizer.decode(tail[0]) == chat.suffix
    assert (batch.last_instruction == batch.seq_len - chat.n_post - 1).all()
    assert (batch.attention_mask.sum(1) > chat.n_post).all()


_CHATML_FMT = chat_format_for(_tokenizer(CHATML))


def test_merge_across_the_boundary_warns_and_keeps_the_span(caplog):
    # "ho" + "me at": the vocabulary has " home", a token that spans the boundary.
    template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}me at{% endif %}"
    )
    chat = ChatFormat(tiny_tokenizer(None), template=template)
    assert chat.n_post == 2
    with caplog.at_level(logging.WARNING, logger="refusal_probe.model.chat"):
        batch = chat.encode(["How do I make a cake at ho"])
    assert "merge with the template's tokens" in caplog.text
    tok = chat.tokenizer
    assert tok.decode(batch.input_ids[0, -2:]) == " home at"
    assert tok.decode(batch.input_ids[0, batch.last_instruction[0]]) == " at"


def test_encoded_to_device():
    batch = _CHATML_FMT.encode(["hi"]).to("cpu")
    assert batch.input_ids.device == torch.device("cpu") and batch.n_post == _CHATML_FMT.n_post


# ---------------------------------------------------------------------------------------------
# robustness


def test_tokenizer_without_pad_or_eos_still_pads():
    tok = _tokenizer(CHATML)
    tok.pad_token = None
    tok.eos_token = None
    batch = ChatFormat(tok).encode(["hi", "How do I make a cake at home?"])
    assert batch.attention_mask[0, 0] == 0  # padded, with a masked-out id


class _SlowTokenizer:
    """A tokenizer proxy without offset mappings, like Python ("slow") tokenizers."""

    is_fast = False

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, text, **kwargs):
        if kwargs.pop("return_offsets_mapping", False):
            raise NotImplementedError("return_offset_mapping is not available for slow tokenizers")
        return self._inner(text, **kwargs)


@pytest.mark.parametrize("template", [CHATML, INST, None])
def test_slow_tokenizer_gives_the_same_spans(template):
    fast = chat_format_for(_tokenizer(template))
    slow = ChatFormat(_SlowTokenizer(_tokenizer(template)))
    assert slow.n_post == fast.n_post
    a, b = fast.encode(INSTRUCTIONS), slow.encode(INSTRUCTIONS)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.last_instruction, b.last_instruction)


@pytest.mark.parametrize("bad", [[], [""], ["ok", "   "]])
def test_empty_instructions_rejected(bad):
    with pytest.raises(ChatFormatError, match="no instructions|empty"):
        _CHATML_FMT.encode(bad)


def test_template_that_drops_the_user_text():
    with pytest.raises(ChatFormatError, match="drops the user's text"):
        ChatFormat(
            tiny_tokenizer(None),
            template="{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
        )


def test_template_without_anything_after_the_user_text():
    with pytest.raises(ChatFormatError, match="no post-instruction span"):
        ChatFormat(
            tiny_tokenizer(None), template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
        )


def test_template_whose_ending_depends_on_the_content():
    template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}<|assistant|>"
        "{% if messages[0]['content'] | length > 20 %} long{% endif %}\n"
    )
    chat = ChatFormat(tiny_tokenizer(None), template=template)
    chat.encode(["short"])
    with pytest.raises(ChatFormatError, match="ending changed"):
        chat.encode(["a much longer instruction than the sentinel"])


def test_named_templates_use_the_default_one():
    tok = _tokenizer(None)
    tok.chat_template = {"default": CHATML, "tool_use": INST}
    chat = chat_format_for(tok)
    assert chat.kind == "model" and chat.suffix == "<|im_end|>\n<|im_start|>assistant\n"


def test_rendered_hash_tracks_what_the_template_writes():
    """Same template text, different rendering (here the BOS token; in Llama 3, today's date)."""
    a = ChatFormat(_tokenizer(None), template=INST)
    other = _tokenizer(None)
    other.bos_token = "<|end|>"
    b = ChatFormat(other, template=INST)
    assert a.template_sha256 == b.template_sha256
    assert a.rendered_sha256 != b.rendered_sha256


def test_a_prompt_longer_than_the_context_loses_its_start(caplog):
    chat = ChatFormat(_tokenizer(CHATML), max_tokens=40)
    long = " ".join(["and then a cake"] * 500) + " ends here?"
    with caplog.at_level(logging.WARNING, logger="refusal_probe.model.chat"):
        batch = chat.encode([long, "How do I make a cake at home?"])
    assert batch.seq_len <= 40
    assert chat.truncated == 1 and "to fit the model's context of 40 tokens" in caplog.text
    tok = chat.tokenizer
    kept = tok.decode(batch.input_ids[0][batch.attention_mask[0].bool()])
    assert kept.endswith("ends here?" + chat.suffix)
    assert tok.decode(batch.input_ids[0, batch.last_instruction[0]]).strip() == "?"


def test_a_prompt_that_is_not_text_is_refused_with_the_package_error():
    with pytest.raises(ChatFormatError, match="instruction 1 is NoneType, not text"):
        _CHATML_FMT.encode(["How do I make a cake?", None])  # type: ignore[list-item]


def test_a_tokenizer_without_a_chat_template_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="refusal_probe.model.chat"):
        chat = chat_format_for(_tokenizer(None))
    assert chat.kind == "plain" and "has no chat template" in caplog.text


def test_a_truncation_is_a_sentence_for_the_report():
    chat = ChatFormat(_tokenizer(CHATML), max_tokens=40)
    assert chat.truncation_note() is None
    chat.encode([" ".join(["and then a cake"] * 500) + " ends here?"])
    note = chat.truncation_note()
    assert note is not None and note.startswith("1 prompt(s) were longer than the model's context")
