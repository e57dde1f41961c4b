"""Reading a Hugging Face checkpoint folder safely: config, weights and tokenizer.

Weights come from safetensors unless pickle is allowed, and then only as plain tensors; code in
the checkpoint runs only with ``trust_remote_code``. Whatever goes wrong is said in one line:
the pickle that holds objects, the tensor whose shape does not fit the config, the weights a
causal language model lacks.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from refusal_probe.errors import ModelLoadError, UnsafeCheckpointError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"``/``"bfloat16"``/``"float16"`` (or a torch dtype) into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def context_length(config: Any) -> int | None:
    """The longest sequence the model takes, from its config (``None`` when it says nothing)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_hf(
    folder: Path,
    spec: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[Any, Any]:
    """Load the Hugging Face model and tokenizer from a folder, safely.

    Args:
        folder: The checkpoint's folder.
        spec: What the user named (for messages).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: Torch device, when there is no ``device_map``.
        device_map: A Hugging Face device map, or ``None``.
        trust_remote_code: Allow the checkpoint's own Python code to run.
        allow_pickle: Allow pickle weight files (loaded as plain tensors only).

    Raises:
        ModelLoadError: The config or weights cannot be read, or they do not fit each other.
        UnsafeCheckpointError: The checkpoint needs code or pickle objects without the opt-in.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise UnsafeCheckpointError(
                f"{spec!r} needs its own Python code to load (trust_remote_code); that code would "
                "run on this machine. Read it first, then pass --trust-remote-code if you accept it"
            ) from exc
        raise ModelLoadError(f"cannot read the config of {spec!r}: {exc}") from exc
    if getattr(config, "auto_map", None) and not trust_remote_code:
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
    with warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")
        try:
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=parse_dtype(dtype),
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
                attn_implementation="eager",
                device_map=device_map,
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
                    f"{spec!r}: {shape_mismatches(AutoModelForCausalLM, config, folder)}; the weights do "
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
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(
                f"{spec!r}: cannot load its tokenizer from {folder}: {exc}"
            ) from exc
    if device_map is None:
        model = model.to(device)
    model.eval()
    _prepare_tokenizer(tokenizer)
    return model, tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Keep transformers' own loading report off the console; our errors say what went wrong."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def shape_mismatches(model_cls: Any, config: Any, folder: Path) -> str:
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
