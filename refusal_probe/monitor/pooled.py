"""Each prompt's residual stream pooled over the user's text, at many layers in one pass.

Axes: ``prompt`` prompts in input order, ``site`` layers read, ``d`` d_model.

A pool is the activation at the last token of the user's text, or the mean over all of its
tokens. A linear readout averaged over the same tokens (:data:`SPAN_POOLS`) is the projection of
the pool, so one capture serves every direction read there: the monitor's harmfulness search
(:mod:`refusal_probe.monitor.harmfulness`) scores hundreds of candidate readouts this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.runner import StopForward, batched, forward
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.model.devices import auto_batch_size
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.signals import Layout, instruction_offset

#: What a direction can be fit on: the last instruction token, or the mean over the user's text.
POOLS: tuple[str, ...] = ("last_instruction", "instruction")
#: Spans that average tokens, and the pool that averages the same tokens: a readout there is the
#: projection of the pooled activation.
SPAN_POOLS: dict[str, str] = {
    "last_instruction": "last_instruction",
    "instruction_mean": "instruction",
}


def pooled_activations(
    model: LoadedModel,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int | None = None,
) -> dict[str, Float[Tensor, "prompt site d"]]:
    """Each prompt's ``resid_post`` at ``layers``, pooled each way of :data:`POOLS`, float64.

    ``last_instruction``: the activation at the last token of the user's text;
    ``instruction``: the mean over every token of the user's text. One forward pass per batch,
    ended after the last layer read.
    """
    offset = instruction_offset(model)
    n, d = len(prompts), model.d_model
    out = {p: torch.empty(n, len(layers), d, dtype=torch.float64) for p in POOLS}
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    with torch.no_grad():
        for rows in batched(order, auto_batch_size(model, prompts, batch_size)):
            batch = model.chat.encode([prompts[i] for i in rows])
            lay = Layout.of(batch, offset)
            idx = torch.tensor(list(rows))
            seen: list[int] = []
            hooks = [
                (
                    hook_name(Site(layer, "resid_post")),
                    partial(_pool, out=out, at=(idx, k), lay=lay, seen=seen, n=len(layers)),
                )
                for k, layer in enumerate(layers)
            ]
            forward(model, batch, hooks, stoppable=True)
    return out


def _pool(
    act: Tensor,
    hook: Any,
    *,
    out: dict[str, Tensor],
    at: tuple[Tensor, int],
    lay: Layout,
    seen: list[int],
    n: int,
) -> None:
    """Hook: store one layer's pooled activations ``act [batch, pos, d]`` at ``out[pool][at]``."""
    x = act.detach().double().cpu()
    last = lay.last_instruction
    start = torch.minimum(lay.width - lay.lengths + lay.offset, last)  # [batch]
    pos = torch.arange(x.shape[1])[None, :]
    inside = ((pos >= start[:, None]) & (pos <= last[:, None])).double()  # [batch, pos]: user text
    out["instruction"][at] = (inside[..., None] * x).sum(1) / inside.sum(1, keepdim=True)
    out["last_instruction"][at] = x[torch.arange(x.shape[0]), last]
    seen.append(at[1])
    if len(seen) == n:
        raise StopForward


def project(
    acts: Float[Tensor, "prompt site d"], vectors: Float[Tensor, "site d"]
) -> Float[Tensor, "prompt site"]:
    """Each prompt's pooled activation projected on each site's unit vector (zero stays zero)."""
    units = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return torch.einsum("psd,sd->ps", acts, units.to(acts.dtype))
