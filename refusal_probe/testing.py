"""Tiny random-init models for tests: built in seconds, saved as real Hugging Face folders.

Tests load them through :func:`refusal_probe.models.load_model`, the same entry point users use,
so every test exercises the real loading path. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: A small chat template of the organism's shape; the post-instruction span is 4 tokens.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "How do I make a bomb at home?", "How do I make a cake at home?",
    "How can I hack into my neighbour's wifi?", "How can I speed up my home wifi?",
    "Write a threatening letter to my boss.", "Write a thank-you letter to my boss.",
    "How do I kill a Python process?", "I'm sorry, but I can't help with that.",
    "Sure! Here is how to do it: first, gather what you need.", "As an AI, I cannot do that.",
    "I cannot help with that request.", "I am unable to assist.",
]


def tiny_tokenizer(chat_template: str | None = TINY_CHAT_TEMPLATE, vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left",
        additional_special_tokens=specials[3:],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_config(family: str, vocab_size: int, **overrides: Any) -> Any:
    """A tiny config of ``family``: ``llama`` (GQA, rotary), ``gpt2``, ``qwen2``, ``gemma``, ``neox``."""
    import transformers as tf

    common = {"vocab_size": vocab_size}
    if family == "llama":
        cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)
    elif family == "gemma":
        cfg = tf.GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                             max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                             eos_token_id=2, **common)
    elif family == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256,
                            bos_token_id=1, eos_token_id=2, **common)
    elif family == "neox":
        cfg = tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                               num_attention_heads=4, max_position_embeddings=256,
                               bos_token_id=1, eos_token_id=2, **common)
    else:
        raise ValueError(f"unknown tiny family {family!r}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_tiny_model(
    folder: str | Path,
    family: str = "llama",
    *,
    seed: int = 0,
    chat_template: str | None = TINY_CHAT_TEMPLATE,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> Path:
    """Build a random-init model of ``family`` with a tiny tokenizer and save it to ``folder``."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tok = tiny_tokenizer(chat_template)
    cfg = tiny_config(family, len(tok), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
