"""Attribution patching: every component's effect to first order, in a constant number of passes.

Axes: ``pair`` matched pairs, ``pos`` positions of the run, ``head``, ``d`` (or ``d_head``).

The estimate for a component is ``(a_source - a_base) . d metric / d a`` at the base run, summed
over its positions (Nanda 2023; Kramar et al. 2024 describe where it fails: saturated attention,
cancelling effects). Gradients at the components' positions do not depend on recomputing earlier
positions, so the differentiated pass runs only the last tokens, from the earliest component
position on, with the earlier keys and values from the KV cache (checked against the full forward;
whole sequences otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from refusal_probe.activations.runner import Hook
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.model.chat import Encoded
from refusal_probe.model.loading import LoadedModel
from refusal_probe.patching.components import Component
from refusal_probe.patching.engine import (
    SUFFIX_ATOL,
    Outcome,
    bind,
    cache_fits,
    full_run,
    log,
    suffix_logits,
)
from refusal_probe.patching.mode import PatchMode
from refusal_probe.patching.pairs import Metric, PairBatch, as_float64, check_metric


def run_attribution(
    model: LoadedModel,
    batch: PairBatch,
    components: Sequence[Component],
    metric: Metric,
    *,
    mode: PatchMode | str = PatchMode.DENOISE,
    suffix: bool = True,
) -> Outcome:
    """First-order estimate of every component's patching effect, in a constant number of passes.

    ``delta[i, c] = sum over the component's positions (and its head's slice) of
    (a_source - a_base) . d metric / d a``, at the base run of pair ``i``. Passes: a source forward,
    a base forward, and a forward and backward over the base run's last tokens only (from the
    earliest component position on; the earlier positions come from the KV cache, and gradients
    at later positions do not depend on them being recomputed).
    """
    mode = PatchMode.of(mode)
    base, source = mode.base_and_source(batch)
    sites = sorted({c.site for c in components})
    width = batch.width
    s_len = min(width, -min(c.start for c in components))
    suffix = suffix and cache_fits(model, width)
    with torch.no_grad():
        src = full_run(model, source, sites, metric, want_kv=False, span=s_len)
        ref = full_run(model, base, [], metric, want_kv=suffix and s_len < width)
    used = ref.kv is not None
    if not used:
        s_len = width
    value, acts, grads = _grad_pass(model, base, ref.kv, s_len, sites, metric)
    if used and float((value - ref.metric).abs().max()) > SUFFIX_ATOL * max(
        1.0, float(ref.metric.abs().max())
    ):
        log.warning(
            "cached-suffix attribution differs from the full forward on this model; "
            "running whole sequences"
        )
        used, s_len = False, width
        value, acts, grads = _grad_pass(model, base, None, s_len, sites, metric)
    per_token: dict[Site, Tensor] = {}
    for s, g in zip(sites, grads, strict=True):
        # source minus base, on the positions the differentiated pass ran
        diff = src.acts[s][:, width - s_len :] - acts[s]
        # [pair, pos] or [pair, pos, head]: the dot product over the last axis
        per_token[s] = (
            as_float64((diff * g).sum(-1))
            if g is not None
            else torch.zeros(diff.shape[:-1], dtype=torch.float64)
        )
    delta = torch.zeros(batch.n, len(components), dtype=torch.float64)
    for j, c in enumerate(components):
        at = torch.tensor([s_len + o for o in c.offsets])
        t = per_token[c.site]
        delta[:, j] = (t[:, at, c.head] if c.kind == "head" else t[:, at]).sum(-1)
    clean, corrupted = mode.clean_and_corrupted(src.metric, ref.metric)
    return Outcome(delta, clean, corrupted, 4 if used else 3, used)


def _grad_pass(
    model: LoadedModel,
    base: Encoded,
    kv: list[tuple[Tensor, Tensor]] | None,
    s_len: int,
    sites: Sequence[Site],
    metric: Metric,
) -> tuple[Tensor, dict[Site, Tensor], tuple[Tensor | None, ...]]:
    """The base run (last ``s_len`` tokens, with ``kv``) and the metric's gradients at ``sites``."""
    acts: dict[Site, Tensor] = {}
    first = Site(0, "resid_pre")

    def keep(act: Tensor, hook: Any, site: Site) -> Tensor:
        if (
            not act.requires_grad
        ):  # frozen weights: make the block-0 input a leaf to differentiate from
            act = act.detach().requires_grad_(True)
        if site in sites:
            acts[site] = act
        return act

    hooks: list[Hook] = [(hook_name(s), bind(keep, site=s)) for s in sorted(set(sites) | {first})]
    with torch.enable_grad():
        logits = suffix_logits(model, base, kv, s_len, 1, hooks)
        value = check_metric(metric(logits[:, -1, :]), base.input_ids.shape[0])
        grads = torch.autograd.grad(value.sum(), [acts[s] for s in sites], allow_unused=True)
    return as_float64(value), {s: a.detach() for s, a in acts.items()}, grads
