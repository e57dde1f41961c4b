"""Each prompt's residual stream pooled over the user's text, at many layers in one pass.

Axes: ``prompt`` prompts in input order, ``site`` layers read, ``d`` d_model.

A pool is the activation at the last token of the user's text, or the mean over all of its
tokens. A linear readout averaged over the same tokens (:data:`SPAN_POOLS`) is the projection of
the pool, so one capture serves every direction read there: the monitor's harmfulness search
(:mod:`refusal_probe.monitor.harmfulness`) scores hundreds of candidate readouts this way. The
same pass keeps the activations at the request ends (the last token of each sentence of the
user's text, and its last token; :class:`RequestEnds`): the ``request_max`` span, their largest
projection, is read off them too, so no span of :data:`CAPTURED_SPANS` needs a pass of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from refusal_probe.activations.prefix import after_prefix
from refusal_probe.activations.runner import StopForward, by_length, forward, keep_last
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.model.devices import auto_batch_size
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.signals import Layout, instruction_offset, sentence_stops

#: What a direction can be fit on: the last instruction token, or the mean over the user's text.
POOLS: tuple[str, ...] = ("last_instruction", "instruction")
#: Spans that average tokens, and the pool that averages the same tokens: a readout there is the
#: projection of the pooled activation.
SPAN_POOLS: dict[str, str] = {
    "last_instruction": "last_instruction",
    "instruction_mean": "instruction",
}


#: Spans read off one capture: the averaging spans' pools, and ``request_max`` off the ends.
CAPTURED_SPANS: tuple[str, ...] = (*SPAN_POOLS, "request_max")


@dataclass(frozen=True)
class RequestEnds:
    """The residual stream at each prompt's request ends, ragged (prompts have different counts).

    Attributes:
        values: ``[end, site, d]`` float32, the ends of every prompt one after another.
        owner: ``[end]`` the prompt (input order) each end belongs to.
        n: Prompts.
    """

    values: Float[Tensor, "end site d"]
    owner: Int[Tensor, " end"]
    n: int

    def max_projection(
        self, vectors: Float[Tensor, "site d"], rows: slice = slice(None)
    ) -> Float[Tensor, "prompt site"]:
        """Each prompt's largest projection over its ends on each site's unit vector, float64.

        The projection runs in float32, as a readout's own pass reads it
        (:func:`refusal_probe.monitor.signals.read_raw`).
        """
        units = (vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-300)).float()
        proj = torch.einsum("esd,sd->es", self.values, units)  # [end, site]
        out = torch.full((self.n, proj.shape[1]), float("-inf"))
        out.scatter_reduce_(0, self.owner[:, None].expand_as(proj), proj, "amax")
        return out.double()[rows]


@dataclass(frozen=True)
class Pooled:
    """One capture of prompts at many layers: the :data:`POOLS` and the request ends.

    Attributes:
        pools: ``{pool: [prompt, site, d]}`` float64 (:data:`POOLS`).
        ends: The request ends.
    """

    pools: dict[str, Float[Tensor, "prompt site d"]]
    ends: RequestEnds

    def read(
        self, span: str, vectors: Float[Tensor, "site d"], rows: slice = slice(None)
    ) -> Float[Tensor, "prompt site"]:
        """The readout of ``span`` (one of :data:`CAPTURED_SPANS`) by each site's vector."""
        if span == "request_max":
            return self.ends.max_projection(vectors, rows)
        return project(self.pools[SPAN_POOLS[span]][rows], vectors)


def pooled_activations(
    model: LoadedModel,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int | None = None,
) -> Pooled:
    """Each prompt's ``resid_post`` at ``layers``: pooled each way of :data:`POOLS`; its ends.

    ``last_instruction``: the activation at the last token of the user's text;
    ``instruction``: the mean over every token of the user's text; the ends: the activations at
    the span ``request_max`` reads. One forward pass per batch, ended after the last layer read.
    """
    offset, stops = instruction_offset(model), sentence_stops(model)
    n, d = len(prompts), model.d_model
    out = {p: torch.empty(n, len(layers), d, dtype=torch.float64) for p in POOLS}
    ends: list[Tensor] = []
    owners: list[Tensor] = []
    with torch.no_grad():
        size = auto_batch_size(model, prompts, batch_size)
        for rows in by_length([len(p) for p in prompts], size):
            batch = model.chat.encode([prompts[i] for i in rows])
            lay = Layout.of(batch, offset, stops)
            text = lay.user_text()  # [batch, pos]
            at_ends = lay.request_ends(text)  # [batch, pos]
            idx = torch.tensor(list(rows))
            owners.append(idx[at_ends.nonzero()[:, 0]])
            ends.append(torch.empty(int(at_ends.sum()), len(layers), d))
            seen: list[int] = []
            # The pools and ends lie in the user's text, after any shared template tokens.
            hooks = [
                (
                    hook_name(Site(layer, "resid_post")),
                    after_prefix(
                        partial(
                            _pool,
                            out=out,
                            at=(idx, k),
                            last=lay.last_instruction,
                            text=text,
                            seen=seen,
                            n=len(layers),
                            ends=(ends[-1], at_ends),
                        )
                    ),
                )
                for k, layer in enumerate(layers)
            ]
            forward(model, batch, hooks, stoppable=True, **keep_last(model))
    cat = torch.cat(ends) if ends else torch.empty(0, len(layers), d)
    owner = torch.cat(owners) if owners else torch.empty(0, dtype=torch.long)
    return Pooled(out, RequestEnds(cat, owner, n))


def _pool(
    act: Tensor,
    hook: Any,
    *,
    out: dict[str, Tensor],
    at: tuple[Tensor, int],
    last: Tensor,
    text: Tensor,
    seen: list[int],
    n: int,
    ends: tuple[Tensor, Tensor],
) -> None:
    """Hook: store one layer's pooled activations ``act [batch, pos, d]`` at ``out[pool][at]``.

    ``last``: each row's last instruction token ``[batch]``; ``text``: the user's text
    ``[batch, pos]`` (:meth:`Layout.user_text`). And its activations at the request ends in
    ``ends[0][:, layer]``.
    """
    x = act.detach().double().cpu()
    inside = text.double()  # [batch, pos]
    out["instruction"][at] = (inside[..., None] * x).sum(1) / inside.sum(1, keepdim=True)
    out["last_instruction"][at] = x[torch.arange(x.shape[0]), last]
    store, mask = ends
    store[:, at[1]] = act.detach()[mask.to(act.device)].float().cpu()
    seen.append(at[1])
    if len(seen) == n:
        raise StopForward


def project(
    acts: Float[Tensor, "prompt site d"], vectors: Float[Tensor, "site d"]
) -> Float[Tensor, "prompt site"]:
    """Each prompt's pooled activation projected on each site's unit vector (zero stays zero)."""
    units = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return torch.einsum("psd,sd->ps", acts, units.to(acts.dtype))
