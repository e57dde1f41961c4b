"""Reference patching: one full forward pass of the base batch per variant.

Axes: ``pair`` matched pairs, ``variant`` patched variants, ``pos`` positions, ``head``.

The TransformerLens approach: slow and simple, no stacking and no KV cache, so it is the yardstick
the batched engine (:mod:`refusal_probe.patching.engine`) is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from refusal_probe.activations.runner import Hook, forward
from refusal_probe.activations.sites import hook_name
from refusal_probe.model.loading import LoadedModel
from refusal_probe.patching.engine import Outcome, Variant, bind, full_run
from refusal_probe.patching.mode import PatchMode
from refusal_probe.patching.pairs import Metric, PairBatch, as_float64, check_metric


@torch.no_grad()
def run_reference(
    model: LoadedModel,
    batch: PairBatch,
    variants: Sequence[Variant],
    metric: Metric,
    *,
    mode: PatchMode | str = PatchMode.DENOISE,
) -> Outcome:
    """One full forward pass of the base batch per variant: slow, simple, the yardstick."""
    mode = PatchMode.of(mode)
    base, source = mode.base_and_source(batch)
    sites = sorted({c.site for v in variants for c in v})
    src = full_run(model, source, sites, metric, want_kv=False)
    ref = full_run(model, base, [], metric, want_kv=False)
    delta = torch.zeros(batch.n, len(variants), dtype=torch.float64)
    width = batch.width
    for j, variant in enumerate(variants):
        hooks: list[Hook] = []
        for comp in variant:
            at = torch.tensor([width + o for o in comp.offsets])
            hooks.append(
                (
                    hook_name(comp.site),
                    bind(_copy_in, at=at, head=comp.head_index, src=src.acts[comp.site]),
                )
            )
        logits = forward(model, base, hooks)
        assert logits is not None
        delta[:, j] = as_float64(check_metric(metric(logits[:, -1, :]), batch.n)) - ref.metric
    clean, corrupted = mode.clean_and_corrupted(src.metric, ref.metric)
    return Outcome(delta, clean, corrupted, 2 + len(variants), False)


def _copy_in(act: Tensor, hook: Any, at: Tensor, head: int | None, src: Tensor) -> Tensor:
    out = act.clone()
    at = at.to(out.device)
    if head is None:
        out[:, at] = src[:, at].to(out)
    else:
        out[:, at, head] = src[:, at, head].to(out)
    return out
