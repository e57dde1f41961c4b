"""Mean ablation outside a circuit: how much of the refusal gap the circuit alone keeps.

Axes: ``pair`` matched pairs, ``span`` the positions ablated, ``head``, ``d_head``, ``d``
(d_model), ``B`` bootstrap resamples.

Every candidate component that is not in the circuit is replaced, at each span position, by its
mean activation over all clean and corrupted prompts; the share of the clean-corrupted metric gap
that remains is what the circuit carries by itself (:func:`refusal_probe.patching.circuit.localize`
reports it beside the fraction the circuit restores).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from refusal_probe.activations.prefix import after_from
from refusal_probe.activations.runner import Hook, forward, keep_last
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.model.loading import LoadedModel
from refusal_probe.patching.components import Component
from refusal_probe.patching.pairs import Metric, PairBatch
from refusal_probe.patching.results import pair_interval
from refusal_probe.stats.intervals import Bootstrap, Interval


@torch.no_grad()
def fraction_kept(
    model: LoadedModel,
    batch: PairBatch,
    circuit: list[Component],
    candidates: list[Component],
    offsets: tuple[int, ...],
    metric: Metric,
    gap: Tensor,
    counts: Tensor,
    boot: Bootstrap,
    pair_batch: int,
) -> Interval:
    """Share of the gap left with every non-circuit candidate mean-ablated at the span.

    The mean of each candidate's activation is taken over all clean and corrupted prompts, at each
    span position.
    """
    rest = [c for c in candidates if c not in circuit]
    sites = sorted({c.site for c in rest})
    chunks = [list(range(i, min(i + pair_batch, batch.n))) for i in range(0, batch.n, pair_batch)]
    sums: dict[Site, Tensor] = {}

    def read(act: Tensor, hook: Any, site: Site, at: Tensor) -> None:
        s = act[:, at.to(act.device)].double().sum(0).cpu()  # [span, ...]
        sums[site] = sums[site] + s if site in sums else s

    last = keep_last(model)
    for rows in chunks:
        part = batch.subset(rows)
        at = torch.tensor([part.width + o for o in offsets])
        for enc in (part.clean, part.corrupted):
            readers = [(hook_name(s), partial(read, site=s, at=at)) for s in sites]
            forward(model, enc, after_from(readers, enc, int(at.min())), **last)
    means = {s: v / (2 * batch.n) for s, v in sums.items()}
    heads: dict[Site, list[int]] = {}
    for c in rest:
        heads.setdefault(c.site, []).append(max(c.head, 0))
    kept = torch.zeros(batch.n, dtype=torch.float64)
    for rows in chunks:
        part = batch.subset(rows)
        at = torch.tensor([part.width + o for o in offsets])
        hooks: list[Hook] = [
            (
                hook_name(s),
                partial(
                    _mean_write,
                    at=at,
                    mean=means[s],
                    heads=torch.tensor(heads[s]) if s.per_head else None,
                ),
            )
            for s in sites
        ]
        values = []
        for enc in (part.clean, part.corrupted):
            logits = forward(model, enc, after_from(hooks, enc, int(at.min())), **last)
            assert logits is not None
            values.append(metric(logits[:, -1, :]).detach().double().cpu())
        kept[rows] = values[0] - values[1]
    n = batch.n
    resampled = (counts @ kept / n) / (counts @ gap / n)  # [B]
    return pair_interval(boot, float(kept.mean() / gap.mean()), resampled, n=n)


def _mean_write(act: Tensor, hook: Any, at: Tensor, mean: Tensor, heads: Tensor | None) -> Tensor:
    # act: [batch, pos, d] or [batch, pos, head, d_head]; mean: [span, d] or [span, head, d_head]
    out = act.clone()
    idx = at.to(out.device)
    m = mean.to(out)
    if heads is None:
        out[:, idx] = m[None]
    else:
        h = heads.to(out.device)
        out[:, idx[:, None], h[None, :]] = m[:, h][None]
    return out
