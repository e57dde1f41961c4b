"""Devices and memory: where a model's tensors live, and how many prompts fit in one pass.

* :func:`parse_device_map` reads ``--device-map`` (``auto``, ``balanced``, ``balanced_low_0``,
  ``sequential``, or a JSON file mapping module names to devices).
* :class:`PerDevice` holds a vector that hooks add or project out, and moves it to the device and
  dtype of each activation it meets once, not on every call: with layers spread over several GPUs
  each device gets its own copy, and on one GPU the host-to-device copy happens once per pass.
* :class:`ActivationSize` estimates the bytes one prompt of a forward pass holds at its peak,
  :func:`batch_size_for` turns free memory into a batch size (plain arithmetic, unit-tested with
  made-up numbers), and :func:`auto_batch_size` is the engine's one entry point: it asks
  ``torch.cuda.mem_get_info`` on CUDA and the free RAM on the CPU.

The estimate is deliberately coarse and errs large: a batch that is too small costs some speed, a
batch that is too large costs the run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from refusal_probe.errors import ModelLoadError

if TYPE_CHECKING:
    from refusal_probe.model.loading import LoadedModel

#: Device-map strategies that accelerate computes itself.
DEVICE_MAP_STRATEGIES: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
#: Most prompts per pass on the CPU, where memory rarely binds and larger batches only add padding.
CPU_MAX_BATCH = 64
#: Most prompts per pass on an accelerator.
GPU_MAX_BATCH = 256
#: Share of the free memory a batch may plan to use; the rest is headroom for the allocator.
MEMORY_FRACTION = 0.6


def parse_device_map(value: str) -> str | dict[str, Any]:
    """Turn a ``--device-map`` value into what ``from_pretrained(device_map=...)`` takes.

    Args:
        value: A strategy (:data:`DEVICE_MAP_STRATEGIES`) or the path of a JSON file holding an
            object from module names to devices (``{"model.layers.0": 0, "lm_head": "cuda:1"}``).

    Raises:
        ModelLoadError: Neither a strategy nor a readable JSON object of module names to devices.
    """
    if value in DEVICE_MAP_STRATEGIES:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ModelLoadError(
            f"--device-map {value!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) "
            "nor an existing JSON file; pass one of those"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"--device-map {path}: not a readable JSON file ({exc})") from None
    bad = (
        [f"{k!r}: {v!r}" for k, v in data.items() if not isinstance(v, (str, int))]
        if isinstance(data, dict)
        else []
    )
    if not isinstance(data, dict) or not data or bad:
        raise ModelLoadError(
            f"--device-map {path}: expected a JSON object from module names to devices, like "
            '{"model.embed_tokens": 0, "model.layers.0": 0, "lm_head": 1}'
            + (f"; bad entries: {', '.join(bad)}" if bad else "")
        )
    return {str(k): v for k, v in data.items()}


def worker_device(device: str, worker: str | None = None, n_gpus: int | None = None) -> str:
    """Resolve ``cuda:worker`` to this pytest-xdist worker's GPU; any other device as given.

    Worker ``gwN`` gets ``cuda:(N mod n_gpus)``, so ``-n <number of GPUs>`` gives each worker a
    GPU of its own; outside xdist (or in its controller) it is ``cuda:0``.

    Args:
        device: A torch device string, or ``cuda:worker``.
        worker: The xdist worker id (default ``$PYTEST_XDIST_WORKER``).
        n_gpus: CUDA devices visible (default ``torch.cuda.device_count()``).

    Raises:
        ModelLoadError: ``cuda:worker`` on a machine without CUDA devices.
    """
    if device != "cuda:worker":
        return device
    worker = worker if worker is not None else os.environ.get("PYTEST_XDIST_WORKER", "")
    n_gpus = torch.cuda.device_count() if n_gpus is None else n_gpus
    if n_gpus < 1:
        raise ModelLoadError("--device cuda:worker: no CUDA device is visible; use --device cpu")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return f"cuda:{index % n_gpus}"


def check_device(device: str) -> torch.device:
    """The torch device ``device`` names, if this machine has it.

    Raises:
        ModelLoadError: Not a device name, a CUDA device on a CPU-only torch or one that is not
            visible, MPS where it is unavailable, or another device torch cannot allocate on.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(
            f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if torch.version.cuda is None and torch.version.hip is None:
            why = f"this torch ({torch.__version__}) is a CPU-only build"
            fix = "use --device cpu, or install a CUDA build of torch"
        elif n == 0:
            why, fix = (
                "no CUDA device is visible",
                "use --device cpu (or check CUDA_VISIBLE_DEVICES)",
            )
        elif dev.index is not None and dev.index >= n:
            why, fix = f"{n} CUDA device(s) are visible", f"use cuda:0 … cuda:{n - 1}"
        else:
            return dev
        raise ModelLoadError(f"--device {device}: {why}; {fix}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"--device {device}: MPS is not available on this machine; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(1, device=dev)
        except (RuntimeError, AssertionError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"--device {device}: torch cannot use it ({why})") from None
    return dev


def check_dtype(device: str, dtype: torch.dtype) -> None:
    """Check that ``dtype`` computes on ``device``: a tiny matmul, softmax and layer norm.

    Raises:
        ModelLoadError: The operations a forward pass needs fail in ``dtype`` there.
    """
    try:
        x = torch.ones(2, 4, dtype=dtype, device=device)
        y = torch.matmul(x, x.T).softmax(-1)
        torch.nn.functional.layer_norm(y, y.shape[-1:])
    except (RuntimeError, TypeError) as exc:
        name = str(dtype).removeprefix("torch.")
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"--dtype {name} is not supported on {device} ({why}); use --dtype float32"
        ) from None


def devices_of(model: LoadedModel) -> list[torch.device]:
    """The devices the model's weights live on, input device first."""
    found = [model.device]
    for p in model.hf_model.parameters():
        if p.device not in found:
            found.append(p.device)
    return found


class PerDevice:
    """A tensor, and its copies on each device and dtype it has been asked for.

    A hook that adds or projects out a vector receives activations on the device of its layer;
    ``PerDevice(v).like(act)`` is ``v`` there, made once per device and dtype and then reused.
    Live for one forward (or one generation) only: the hooks that hold it are scoped.
    """

    def __init__(self, tensor: Tensor) -> None:
        """Wrap ``tensor`` (kept as given; copies are made on first use)."""
        self.tensor = tensor
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def like(self, x: Tensor) -> Tensor:
        """The tensor on ``x``'s device, in ``x``'s dtype."""
        return self._get(x.device, x.dtype)

    def on(self, device: torch.device) -> Tensor:
        """The tensor on ``device``, in its own dtype (indices, masks)."""
        return self._get(device, self.tensor.dtype)

    def _get(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        out = self._copies.get(key)
        if out is None:
            out = self._copies[key] = self.tensor.to(device=device, dtype=dtype)
        return out

    def __repr__(self) -> str:
        return f"PerDevice({tuple(self.tensor.shape)}, copies={len(self._copies)})"


# ---------------------------------------------------------------------------------------------
# batch sizes


@dataclass(frozen=True)
class ActivationSize:
    """What decides the activation memory of a forward pass, per prompt.

    Attributes:
        d_model: Width of the residual stream.
        d_mlp: Width of the MLP's hidden layer.
        n_layers: Transformer blocks (the KV cache holds every layer).
        n_heads: Query heads (eager attention holds ``heads x pos x pos`` scores).
        kv_width: ``n_kv_heads * d_head``: width of one layer's keys (and of its values).
        d_vocab: Vocabulary size (logits).
        bytes_per_value: Bytes of one activation value in the model's dtype (4, or 2 for 16-bit).
    """

    d_model: int
    d_mlp: int
    n_layers: int
    n_heads: int
    kv_width: int
    d_vocab: int
    bytes_per_value: int

    @classmethod
    def of(cls, model: LoadedModel) -> ActivationSize:
        """The sizes of a loaded model."""
        cfg = model.hf_model.config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        d_mlp = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
        i = model.identity
        d_head = getattr(text, "head_dim", None) or i.d_model // max(i.n_heads, 1)
        return cls(
            d_model=i.d_model,
            d_mlp=int(d_mlp or 4 * i.d_model),
            n_layers=i.n_layers,
            n_heads=i.n_heads,
            kv_width=int(i.n_kv_heads * d_head),
            d_vocab=i.d_vocab,
            bytes_per_value=model.dtype.itemsize,
        )

    def bytes_per_prompt(self, seq_len: int, *, logit_positions: int = 1) -> int:
        """Peak bytes one prompt of ``seq_len`` tokens holds during a forward pass (no gradients).

        The sum of: one block's live activations (residual, normed input, attention output,
        the MLP's gate, up and activation) per token; eager attention scores and probabilities,
        in float32, per head and pair of tokens; the keys and values of every layer (the pass
        keeps a KV cache); and float32 logits, twice (log-softmax makes a copy), at
        ``logit_positions`` positions.
        """
        b = self.bytes_per_value
        per_token = b * (4 * self.d_model + 3 * self.d_mlp + 2 * self.n_layers * self.kv_width)
        attention = 4 * 2 * self.n_heads * seq_len * seq_len
        logits = 4 * 2 * self.d_vocab * logit_positions
        return seq_len * per_token + attention + logits


def batch_size_for(
    free_bytes: int,
    bytes_per_prompt: int,
    *,
    max_batch: int,
    fraction: float = MEMORY_FRACTION,
) -> int:
    """How many prompts fit: ``floor(free_bytes * fraction / bytes_per_prompt)``, in [1, max_batch].

    Args:
        free_bytes: Memory free for activations (weights already loaded), in bytes.
        bytes_per_prompt: Peak bytes of one prompt (:meth:`ActivationSize.bytes_per_prompt`).
        max_batch: Upper bound (padding makes huge batches wasteful even where they fit).
        fraction: Share of ``free_bytes`` a batch may plan to use.
    """
    if bytes_per_prompt <= 0:
        return max_batch
    fits = math.floor(max(free_bytes, 0) * fraction / bytes_per_prompt)
    return max(1, min(max_batch, fits))


def free_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes.

    ``torch.cuda.mem_get_info`` on CUDA, the free RAM on the CPU; ``None`` where the system cannot
    say, and for other accelerators.
    """
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # not a POSIX system
            return None
    return None


def auto_batch_size(
    model: LoadedModel,
    prompts: Sequence[str],
    requested: int | None = None,
    *,
    new_tokens: int = 0,
    logit_positions: int = 1,
    max_batch: int | None = None,
) -> int:
    """The batch size for a pass over ``prompts``: ``requested``, or one chosen from free memory.

    With ``requested=None`` the longest prompt (plus ``new_tokens`` generated ones) is measured
    in tokens, :class:`ActivationSize` estimates one prompt's peak bytes, and
    :func:`batch_size_for` divides the free memory of the tightest device the model lives on by
    it, capped by ``max_batch`` (default :data:`GPU_MAX_BATCH` on accelerators,
    :data:`CPU_MAX_BATCH` on the CPU).

    Args:
        model: The loaded model.
        prompts: The prompts of the pass (only the longest is tokenized).
        requested: A fixed batch size (returned as is), or ``None`` for automatic.
        new_tokens: Tokens generated after the prompt (greedy generation).
        logit_positions: Positions whose logits the pass keeps (``1`` with ``logits_to_keep=1``).
        max_batch: Upper bound of the automatic size.

    Raises:
        ValueError: ``requested`` is below 1.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"batch size must be >= 1, got {requested}")
        return int(requested)
    devices = devices_of(model)
    on_cpu = all(d.type == "cpu" for d in devices)
    cap = max_batch or (CPU_MAX_BATCH if on_cpu else GPU_MAX_BATCH)
    frees = [f for f in (free_bytes(d) for d in devices) if f is not None]
    if not prompts or not frees:
        return cap
    longest = max(prompts, key=len)
    seq_len = model.chat.encode([longest]).seq_len + new_tokens
    need = ActivationSize.of(model).bytes_per_prompt(seq_len, logit_positions=logit_positions)
    return batch_size_for(min(frees), need, max_batch=cap)
