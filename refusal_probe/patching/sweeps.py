"""Public sweeps: exact, reference and attribution patching of whole grids.

Each takes the model, matched pairs (``Pair`` records or ``(harmful, harmless)`` tuples) and a
grid name (see :mod:`refusal_probe.patching.components`), and returns a
:class:`~refusal_probe.patching.results.PatchResult` per grid. Pairs are processed in chunks of
similar length (little padding); results come back in input order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from refusal_probe.activations.sites import Positions
from refusal_probe.errors import PatchingError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.patching.attribution import run_attribution
from refusal_probe.patching.components import GRIDS, Component, Grid, make_grid
from refusal_probe.patching.engine import Outcome, Variant, run_exact, stack_outcomes
from refusal_probe.patching.mode import PatchMode
from refusal_probe.patching.pairs import (
    Metric,
    PairBatch,
    PairLike,
    default_metric,
    encode_pairs,
    metric_name,
    offsets_for,
)
from refusal_probe.patching.reference import run_reference
from refusal_probe.patching.results import PatchResult, make_result
from refusal_probe.stats.intervals import Bootstrap


def exact_patching(
    model: LoadedModel,
    pairs: Sequence[PairLike] | PairBatch,
    grid: str = "head_pos",
    *,
    metric: Metric | None = None,
    positions: Positions | None = None,
    layers: Sequence[int] | None = None,
    mode: PatchMode | str = PatchMode.DENOISE,
    pair_batch: int = 32,
    max_rows: int = 256,
    boot: Bootstrap = Bootstrap(),
) -> PatchResult:
    """Exact activation patching of every component of ``grid``, many per forward pass.

    Args:
        model: The model.
        pairs: Matched (harmful, harmless) pairs of equal token length, or an encoded batch.
        grid: ``resid`` (layer x pos), ``head`` (layer x head, the span's positions together),
            ``head_pos`` (layer x head x pos), ``mlp`` (layer) or ``mlp_pos`` (layer x pos).
        metric: Last-position logits ``[batch, vocab]`` -> ``[batch]``; default the refusal
            log-odds with the tokenizer's refusal tokens.
        positions: Positions to patch; default the post-instruction span (for ``resid``: every
            position from the first one where some pair differs).
        layers: Layers to sweep (default all).
        mode: ``PatchMode.DENOISE`` (clean into corrupted; effect = fraction of the gap
            restored) or ``PatchMode.NOISE`` (corrupted into clean; effect = fraction destroyed);
            the names ``"denoise"`` and ``"noise"`` work too.
        pair_batch: Pairs per chunk.
        max_rows: Most rows (variants x pairs) per forward pass; bounds memory.
        boot: Resamples, seed and level of the intervals (pairs are resampled).

    Returns:
        Effects with intervals, shaped like the grid.

    Raises:
        PatchingError: Unmatched pair lengths, an unknown grid or mode, bad positions.
    """
    return _sweep(
        model,
        pairs,
        grid,
        "exact",
        metric,
        positions,
        layers,
        mode,
        pair_batch,
        boot,
        lambda b, comps, m: run_exact(
            model, b, [(c,) for c in comps], m, mode=mode, max_rows=max_rows
        ),
    )


def reference_patching(
    model: LoadedModel,
    pairs: Sequence[PairLike] | PairBatch,
    grid: str = "head_pos",
    *,
    metric: Metric | None = None,
    positions: Positions | None = None,
    layers: Sequence[int] | None = None,
    mode: PatchMode | str = PatchMode.DENOISE,
    pair_batch: int = 32,
    boot: Bootstrap = Bootstrap(),
) -> PatchResult:
    """Exact patching with one full forward pass per component (the slow yardstick).

    Same arguments and result as :func:`exact_patching`.
    """
    return _sweep(
        model,
        pairs,
        grid,
        "reference",
        metric,
        positions,
        layers,
        mode,
        pair_batch,
        boot,
        lambda b, comps, m: run_reference(model, b, [(c,) for c in comps], m, mode=mode),
    )


def attribution_patching(
    model: LoadedModel,
    pairs: Sequence[PairLike] | PairBatch,
    grids: Sequence[str] = GRIDS,
    *,
    metric: Metric | None = None,
    positions: Positions | None = None,
    layers: Sequence[int] | None = None,
    mode: PatchMode | str = PatchMode.DENOISE,
    pair_batch: int = 32,
    boot: Bootstrap = Bootstrap(),
) -> dict[str, PatchResult]:
    """Attribution patching of every component of every grid in ``grids``, in 3 passes per chunk.

    The effect of a component is estimated as ``(a_source - a_base) . d metric / d a`` at the base
    run (a first-order Taylor expansion of exact patching): one source forward, one base forward
    and one backward, whatever the number of components. It is a filter, not a verdict: it misses
    saturated attention and cancelling effects, so confirm the top components exactly
    (:func:`refusal_probe.patching.localize` does).

    Returns:
        One result per grid name, in the order asked. Other arguments as :func:`exact_patching`.
    """
    mode = PatchMode.of(mode)
    _check(grids)
    metric = metric or default_metric(model)
    batch = pairs if isinstance(pairs, PairBatch) else encode_pairs(model, pairs)
    layer_t = tuple(layers) if layers is not None else None
    made = [
        make_grid(g, model.n_layers, model.n_heads, offsets_for(batch, positions, g), layer_t)
        for g in grids
    ]
    comps = sorted({c for g in made for c in g.components})
    t0 = time.perf_counter()
    out = _chunked(batch, pair_batch, lambda b: run_attribution(model, b, comps, metric, mode=mode))
    seconds = time.perf_counter() - t0
    col = {c: i for i, c in enumerate(comps)}
    results = {}
    for g in made:
        delta = out.delta[:, [col[c] for c in g.components]]
        results[g.name] = make_result(
            g,
            "attribution",
            mode,
            delta,
            out.clean,
            out.corrupted,
            pair_ids=batch.ids,
            metric=metric_name(metric),
            model_fingerprint=model.identity.fingerprint,
            boot=boot,
            forwards=out.forwards,
            seconds=seconds,
        )
    return results


def patch_variants(
    model: LoadedModel,
    batch: PairBatch,
    variants: Sequence[Variant],
    metric: Metric,
    *,
    mode: PatchMode | str = PatchMode.DENOISE,
    pair_batch: int = 32,
    max_rows: int = 256,
) -> Outcome:
    """Exact patching of arbitrary variants (each a tuple of components patched together)."""
    mode = PatchMode.of(mode)
    return _chunked(
        batch,
        pair_batch,
        lambda b: run_exact(model, b, variants, metric, mode=mode, max_rows=max_rows),
    )


def _sweep(
    model: LoadedModel,
    pairs: Sequence[PairLike] | PairBatch,
    grid: str,
    method: str,
    metric: Metric | None,
    positions: Positions | None,
    layers: Sequence[int] | None,
    mode: PatchMode | str,
    pair_batch: int,
    boot: Bootstrap,
    run: Callable[[PairBatch, Sequence[Component], Metric], Outcome],
) -> PatchResult:
    mode = PatchMode.of(mode)
    _check((grid,))
    metric = metric or default_metric(model)
    batch = pairs if isinstance(pairs, PairBatch) else encode_pairs(model, pairs)
    g: Grid = make_grid(
        grid,
        model.n_layers,
        model.n_heads,
        offsets_for(batch, positions, grid),
        tuple(layers) if layers is not None else None,
    )
    t0 = time.perf_counter()
    out = _chunked(batch, pair_batch, lambda b: run(b, g.components, metric))
    return make_result(
        g,
        method,
        mode,
        out.delta,
        out.clean,
        out.corrupted,
        pair_ids=batch.ids,
        metric=metric_name(metric),
        model_fingerprint=model.identity.fingerprint,
        boot=boot,
        forwards=out.forwards,
        seconds=time.perf_counter() - t0,
    )


def _chunked(batch: PairBatch, pair_batch: int, run: Callable[[PairBatch], Outcome]) -> Outcome:
    """Run chunks of pairs of similar length; results in the batch's pair order."""
    if pair_batch < 1:
        raise PatchingError(f"pair_batch must be >= 1, got {pair_batch}")
    if batch.n <= pair_batch:
        return run(batch)
    lengths = batch.clean.attention_mask.sum(-1)
    order = torch.argsort(lengths, stable=True)
    parts = [
        run(batch.subset(order[i : i + pair_batch].tolist())) for i in range(0, batch.n, pair_batch)
    ]
    return stack_outcomes(parts, order)


def _check(grids: Sequence[Any]) -> None:
    bad = [g for g in grids if g not in GRIDS]
    if bad:
        raise PatchingError(f"unknown grids {bad}; use names from {GRIDS}")
