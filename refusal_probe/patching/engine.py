"""The patching engine: unpatched runs and batched exact patching over a cached suffix.

Axes: ``pair`` matched pairs, ``variant`` patched variants of one forward, ``row`` = variant x pair
(row ``v * n_pairs + i`` is pair ``i`` under variant ``v``), ``pos`` positions, ``head``,
``d_head``, ``d`` (d_model), ``vocab``.

The *base* run receives the patch and the *source* run supplies the values: denoising patches
clean (harmful) activations into the corrupted (harmless) run, noising the reverse.

**Exact, batched.** Many patched variants share one forward pass: the base batch is stacked once
per variant and each variant's hook writes only into its own rows. A patch at offset ``p`` leaves
every earlier position untouched (attention is causal), so only the last ``-p`` tokens are run:
the keys and values of the earlier positions come from the unpatched base run, through the Hugging
Face KV cache. Variants are grouped by their earliest patched offset so each group runs the shortest
suffix that holds its patches. Only the last position's logits are computed.

``TransformerBridge.forward(start_at_layer=k)`` would be the other way to skip work, but in
TransformerLens 4.3 it still runs blocks ``0..k-1`` and discards their output, so it saves nothing.
The KV cache needs one adapter: Hugging Face 5.x hands attention its cache as ``cache=``, while the
bridge's attention components read ``past_key_values``;
:func:`refusal_probe.activations.runner.kv_cache_alias` forwards it, for one call only. Whether the
cached path reproduces the full forward is checked on every run (an unpatched suffix pass must give
the base metric); if it does not, the engine falls back to running whole sequences and logs why.

The cached-suffix forward and the unpatched runs are shared with
:mod:`refusal_probe.patching.attribution`; the plain loop it is checked against is
:mod:`refusal_probe.patching.reference`.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from refusal_probe import progress
from refusal_probe.activations.prefix import after_from, sliding_window
from refusal_probe.activations.runner import Hook, forward, kv_cache_alias
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.model.chat import Encoded
from refusal_probe.model.loading import LoadedModel
from refusal_probe.patching.components import Component
from refusal_probe.patching.mode import PatchMode
from refusal_probe.patching.pairs import Metric, PairBatch, as_float64, check_metric

log = logging.getLogger(__name__)

#: A patched variant: the components patched together in one run.
Variant = tuple[Component, ...]

# An unpatched suffix pass must match the full forward to this tolerance (float32 round-off of the
# cached path is ~1e-6).
SUFFIX_ATOL = 1e-4


@dataclass(frozen=True)
class Outcome:
    """Per-pair results of one engine call.

    Attributes:
        delta: Metric change of each variant against the unpatched base run, ``[pair, variant]``,
            float64 (for attribution: its first-order estimate).
        clean: Metric of the clean (harmful) run, ``[pair]``.
        corrupted: Metric of the corrupted (harmless) run, ``[pair]``.
        forwards: Forward passes run (backward passes count as one more each).
        suffix: Whether the cached-suffix path was used.
    """

    delta: Tensor
    clean: Tensor
    corrupted: Tensor
    forwards: int
    suffix: bool


@dataclass
class Run:
    """An unpatched run: its metric, full activations at some sites, and its KV cache."""

    metric: Tensor  # [pair] float64
    acts: dict[Site, Tensor]  # [pair, pos, ...]
    kv: list[tuple[Tensor, Tensor]] | None  # per layer: keys, values [pair, kv_head, pos, d_head]


# ---------------------------------------------------------------------------------------------
# exact, batched


@torch.no_grad()
def run_exact(
    model: LoadedModel,
    batch: PairBatch,
    variants: Sequence[Variant],
    metric: Metric,
    *,
    mode: PatchMode | str = PatchMode.DENOISE,
    max_rows: int = 256,
    suffix: bool = True,
) -> Outcome:
    """Patch every variant exactly, many variants per forward pass.

    Args:
        model: The model.
        batch: Encoded matched pairs.
        variants: Each a tuple of components patched together.
        metric: Last-position logits -> one value per row.
        mode: ``DENOISE`` (clean values into the corrupted run) or ``NOISE``.
        max_rows: Most rows (variants x pairs) per forward pass; bounds memory.
        suffix: Use the cached-suffix path when it checks out (``False``: whole sequences).
    """
    mode = PatchMode.of(mode)
    base, source = mode.base_and_source(batch)
    n, width = batch.n, batch.width
    suffix = suffix and cache_fits(model, width)
    sites = sorted({c.site for v in variants for c in v})
    starts = [min(c.start for c in v) if v else -1 for v in variants]
    src = full_run(model, source, sites, metric, want_kv=False, span=-min(starts, default=-1))
    ref = full_run(model, base, [], metric, want_kv=suffix)
    forwards = 2
    use_suffix = (
        suffix
        and ref.kv is not None
        and _suffix_ok(model, base, ref, -min(starts, default=-1), metric)
    )
    forwards += int(use_suffix)
    delta = torch.zeros(n, len(variants), dtype=torch.float64)
    per_forward = max(1, max_rows // n)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(starts):
        groups[s if use_suffix else -width].append(i)
    with progress.task("patching", len(variants), "variant") as bar:
        for start, members in sorted(groups.items()):
            s_len = -start
            for lo in range(0, len(members), per_forward):
                idx = members[lo : lo + per_forward]
                hooks = _patch_hooks(
                    [variants[i] for i in idx], src.acts, n, s_len, width, model.device
                )
                values = _suffix_metric(
                    model, base, ref if use_suffix else None, s_len, len(idx), hooks, metric
                )
                delta[:, idx] = values.view(len(idx), n).T - ref.metric[:, None]
                forwards += 1
                bar.update(len(idx))
    clean, corrupted = mode.clean_and_corrupted(src.metric, ref.metric)
    return Outcome(delta, clean, corrupted, forwards, use_suffix)


def full_run(
    model: LoadedModel,
    batch: Encoded,
    sites: Sequence[Site],
    metric: Metric,
    *,
    want_kv: bool,
    span: int | None = None,
) -> Run:
    """An unpatched forward keeping full activations at ``sites`` (and the KV cache if asked).

    With ``span``, only the activations of the last ``span`` positions will be read: where they
    lie after the batch's shared template tokens, those may run once
    (:mod:`refusal_probe.activations.prefix`), and the kept activations then hold zeros there.
    """
    acts: dict[Site, Tensor] = {}

    def keep(act: Tensor, hook: Any, site: Site) -> None:
        acts[site] = act.detach().clone()

    hooks: list[Hook] = [(hook_name(s), bind(keep, site=s)) for s in sites]
    if span is not None:
        hooks = after_from(hooks, batch, batch.seq_len - span)
    kwargs = _last_only(model)
    if want_kv:
        kwargs.update(return_type="logits_and_cache", use_cache=True)
        with kv_cache_alias(model):
            logits, cache = forward(model, batch, hooks, **kwargs)  # type: ignore[misc]
        kv = _cache_tensors(cache, model.n_layers)
    else:
        logits, kv = forward(model, batch, hooks, **kwargs), None
    assert logits is not None  # not stoppable
    value = check_metric(metric(logits[:, -1, :]), batch.input_ids.shape[0])
    return Run(as_float64(value), acts, kv)


def cache_fits(model: LoadedModel, width: int) -> bool:
    """Whether a KV cache of ``width`` positions, filled by hand, serves the cached-suffix path.

    Not past a sliding attention window: those layers' caches keep only the window's last
    positions, so a cache filled with every position does not fit their masks.
    """
    window = sliding_window(model)
    return window is None or width <= window


def _suffix_ok(model: LoadedModel, base: Encoded, ref: Run, s_len: int, metric: Metric) -> bool:
    """Whether an unpatched cached-suffix pass reproduces the base run's metric."""
    try:
        got = _suffix_metric(model, base, ref, s_len, 1, [], metric).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        log.warning(
            "cached-suffix patching is unavailable for this model (%s); running whole sequences",
            exc,
        )
        return False
    err = float((got - ref.metric).abs().max())
    if err > SUFFIX_ATOL * max(1.0, float(ref.metric.abs().max())):
        log.warning(
            "cached-suffix patching differs from the full forward by %.2e on this model; "
            "running whole sequences instead",
            err,
        )
        return False
    return True


def _suffix_metric(
    model: LoadedModel,
    base: Encoded,
    ref: Run | None,
    s_len: int,
    copies: int,
    hooks: list[Hook],
    metric: Metric,
) -> Tensor:
    """Metric of ``copies`` stacked copies of the base batch, running its last ``s_len`` tokens."""
    logits = suffix_logits(model, base, ref.kv if ref is not None else None, s_len, copies, hooks)
    return as_float64(check_metric(metric(logits[:, -1, :]), base.input_ids.shape[0] * copies))


def suffix_logits(
    model: LoadedModel,
    base: Encoded,
    kv: list[tuple[Tensor, Tensor]] | None,
    s_len: int,
    copies: int,
    hooks: Sequence[Hook],
) -> Tensor:
    """Last-position logits of ``copies`` stacked copies of the base batch, ``[rows, 1, vocab]``.

    With ``kv`` (the base run's KV cache) only the last ``s_len`` tokens are run and the earlier
    positions come from the cache; without it, whole sequences are run. Row ``v * n + i`` is pair
    ``i`` of copy ``v``.
    """
    width = base.seq_len
    kwargs = _last_only(model)
    if kv is None or s_len >= width:
        stacked = Encoded(
            base.input_ids.repeat(copies, 1),
            base.attention_mask.repeat(copies, 1),
            base.position_ids.repeat(copies, 1),
            base.last_instruction.repeat(copies),
            base.n_post,
        )
        logits = forward(model, stacked, hooks, **kwargs)
    else:
        from transformers import DynamicCache

        cut = width - s_len
        cache = DynamicCache()
        for layer, (k, v) in enumerate(kv):
            # [rows, kv_head, cut, d_head]
            cache.update(
                k[:, :, :cut].repeat(copies, 1, 1, 1), v[:, :, :cut].repeat(copies, 1, 1, 1), layer
            )
        stacked = Encoded(
            base.input_ids[:, cut:].repeat(copies, 1),
            base.attention_mask.repeat(copies, 1),
            base.position_ids[:, cut:].repeat(copies, 1),
            base.last_instruction.repeat(copies),
            base.n_post,
        )
        with kv_cache_alias(model), warnings.catch_warnings():
            # Hugging Face 5.x renames the argument ``cache``; the bridge passes the old name.
            warnings.filterwarnings(
                "ignore", message=".*past_key_values.*deprecated", category=FutureWarning
            )
            logits = forward(model, stacked, hooks, past_key_values=cache, **kwargs)
    assert logits is not None
    return logits


def _patch_hooks(
    chunk: Sequence[Variant],
    src: dict[Site, Tensor],
    n: int,
    s_len: int,
    width: int,
    device: torch.device,
) -> list[Hook]:
    """One hook per site, writing every variant's source values into that variant's rows."""
    entries: dict[Site, list[tuple[int, int, int]]] = defaultdict(list)
    for v, variant in enumerate(chunk):
        for comp in variant:
            for off in comp.offsets:
                entries[comp.site].append((v, max(comp.head, 0), off))
    hooks: list[Hook] = []
    pair = torch.arange(n)
    for site, items in entries.items():
        e = torch.tensor(items)  # [m, 3]: variant, head, offset
        m = e.shape[0]
        rows = (e[:, :1] * n + pair).reshape(-1)  # [m * n]
        pairs = pair.repeat(m)
        heads = e[:, 1].repeat_interleave(n)
        offs = e[:, 2].repeat_interleave(n)
        s = src[site]
        values = s[pairs, width + offs, heads] if site.per_head else s[pairs, width + offs]
        idx = (rows.to(device), (s_len + offs).to(device), heads.to(device))
        hooks.append(
            (hook_name(site), bind(_write, idx=idx, values=values, per_head=site.per_head))
        )
    return hooks


def _write(
    act: Tensor, hook: Any, idx: tuple[Tensor, Tensor, Tensor], values: Tensor, per_head: bool
) -> Tensor:
    # act: [rows, pos, d] or, at hook_z, [rows, pos, head, d_head]
    out = act.clone()
    rows, pos, heads = idx
    if per_head:
        out[rows, pos, heads] = values.to(out.dtype)
    else:
        out[rows, pos] = values.to(out.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# helpers


def bind(fn: Any, **kwargs: Any) -> Any:
    """``functools.partial`` that keeps ``fn(act, hook, ...)`` readable in tracebacks."""
    from functools import partial

    return partial(fn, **kwargs)


def _last_only(model: LoadedModel) -> dict[str, Any]:
    """Ask for the last position's logits only, where the model's forward supports it."""
    params = inspect.signature(model.hf_model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def _cache_tensors(cache: Any, n_layers: int) -> list[tuple[Tensor, Tensor]] | None:
    """Keys and values per layer from a Hugging Face cache, or ``None`` if it holds none."""
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != n_layers:
        return None
    out = []
    for layer in layers:
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(k, Tensor) or not isinstance(v, Tensor):
            return None
        out.append((k.detach(), v.detach()))
    return out


def stack_outcomes(parts: Sequence[Outcome], order: Tensor) -> Outcome:
    """Concatenate per-chunk outcomes along the pair axis and restore the input order."""
    delta = torch.cat([p.delta for p in parts])
    clean = torch.cat([p.clean for p in parts])
    corrupted = torch.cat([p.corrupted for p in parts])
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel())
    return Outcome(
        delta[inv],
        clean[inv],
        corrupted[inv],
        sum(p.forwards for p in parts),
        all(p.suffix for p in parts),
    )
