"""The base model the realistic organism's adapters are trained on, loaded for training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Base:
    """The model adapters are trained on: plain Hugging Face (no bridge, no hooks)."""

    hf: Any
    tokenizer: Any
    chat: Any
    sha256: str


def load_base(spec: str = "smollm2") -> Base:
    """Load a packaged model for training (the GGUF file converted once, as the loader does)."""
    from refusal_probe.model.chat import chat_format_for
    from refusal_probe.model.hf import context_length, load_hf
    from refusal_probe.model.loading import default_cache_dir
    from refusal_probe.model.sources import gguf_as_safetensors, packaged_model_path

    folder, sha = gguf_as_safetensors(packaged_model_path(spec), default_cache_dir())
    hf, tokenizer = load_hf(folder, spec)
    return Base(
        hf, tokenizer, chat_format_for(tokenizer, max_tokens=context_length(hf.config)), sha
    )
