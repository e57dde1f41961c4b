"""Screening candidate directions by attribution: every candidate's ablation effect, to first order.

Axes: ``cand`` candidates, ``batch`` prompts of one pass, ``pos`` token positions, ``d`` d_model.

Scoring a candidate exactly (:mod:`refusal_probe.selection.selection`) costs a forward pass over the
validation prompts per candidate and score; a 30-layer model with 5 post-instruction positions has
150 candidates. Directional ablation replaces every activation ``x`` it touches (each block input,
each attention and MLP output, at every position) with ``x - eps (x . u) u``; the derivative of the
refusal log-odds ``S`` at ``eps = 0`` is

    dS/deps = - sum over sites and positions of (g . u)(x . u)  =  - u^T M u,
    M = sum over sites and positions of g x^T,

where ``g`` is ``dS/dx`` in the plain forward pass (backpropagation gives it with every other site
left as it is, which is what the chain rule through all the sites at once needs). So one forward
and one backward pass over the harmful prompts give ``M`` (``d x d``), and with it the first-order
bypass estimate ``S + dS/deps`` of *every* candidate: a quadratic form per candidate. Selection
then scores exactly only the candidates the estimate ranks best.

The estimate is linear in a removal that is not small, so it ranks rather than measures: the
exact scores decide. How often screening keeps the exact winner is measured on the organism and on
a real model in ``benchmarks/direction_results.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.runner import Hook, by_length, forward
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.direction.estimators import Direction
from refusal_probe.interventions.hooks import ABLATION_KINDS
from refusal_probe.model.devices import auto_batch_size
from refusal_probe.model.loading import LoadedModel
from refusal_probe.scoring.refusal import RefusalTokens, refusal_score_from_logits


def ablation_moment(
    model: LoadedModel,
    prompts: Sequence[str],
    tokens: RefusalTokens,
    *,
    batch_size: int | None = None,
) -> tuple[Float[Tensor, "d d"], Float[Tensor, " prompt"], int]:
    """``M = sum g x^T`` over the ablation sites, averaged over prompts, and the base scores.

    Args:
        model: The loaded model.
        prompts: The prompts whose mean refusal log-odds the estimate is of (harmful ones).
        tokens: The refusal tokens of the log-odds.
        batch_size: Prompts per pass (``None``: chosen from free memory; a backward pass keeps
            every site's activations, so the automatic size is a quarter of a plain pass's).

    Returns:
        ``M`` in float64 on the CPU (mean over prompts), each prompt's refusal log-odds, and the
        number of forward-and-backward passes run.
    """
    sites = [Site(layer, kind) for layer in range(model.n_layers) for kind in ABLATION_KINDS]
    size = batch_size or max(1, auto_batch_size(model, prompts, None) // 4)
    moment = torch.zeros(model.d_model, model.d_model, dtype=torch.float64)
    scores = torch.empty(len(prompts), dtype=torch.float64)
    chunks = by_length([len(p) for p in prompts], size)
    acts: dict[Site, Tensor] = {}  # this batch's activations at every site, in the graph

    def keep(act: Tensor, hook: Any, site: Site) -> Tensor:
        if not act.requires_grad:  # frozen weights: start the graph here
            act = act.detach().requires_grad_(True)
        acts[site] = act
        return act

    hooks: list[Hook] = [(hook_name(s), partial(keep, site=s)) for s in sites]
    for rows in chunks:
        batch = model.chat.encode([prompts[i] for i in rows])
        acts.clear()
        with torch.enable_grad():
            logits = forward(model, batch, hooks, logits_to_keep=1)
            assert logits is not None  # not stoppable
            score = refusal_score_from_logits(logits[:, -1, :].float(), tokens)
            wanted = [s for s in sites if s in acts]
            grads = torch.autograd.grad(score.sum(), [acts[s] for s in wanted], allow_unused=True)
        for s, g in zip(wanted, grads, strict=True):
            if g is None:  # the site does not reach the score (it cannot in a causal model)
                continue
            x = acts[s].detach()
            # [batch, pos, d] -> [d, d], padding included: its gradient is zero
            moment += (g.flatten(0, -2).double().T @ x.flatten(0, -2).double()).cpu()
        scores[torch.tensor(list(rows))] = score.detach().cpu()
    return moment / len(prompts), scores, len(chunks)


def estimated_bypass(
    moment: Float[Tensor, "d d"], base: float, candidates: Sequence[Direction]
) -> Float[Tensor, " cand"]:
    """First-order mean refusal log-odds with each candidate ablated: ``base - u^T M u``."""
    if not candidates:
        return torch.empty(0, dtype=torch.float64)
    units = torch.stack([d.unit for d in candidates])  # [cand, d], float64
    return base - ((units @ moment) * units).sum(-1)


def screen(
    estimate: Float[Tensor, " cand"], keep: int, eligible: Sequence[bool] | None = None
) -> list[int]:
    """Indices of the ``keep`` candidates with the lowest estimated bypass, eligible ones first.

    Ineligible candidates (for example past the layer cutoff, which selection discards anyway)
    are kept only when fewer than ``keep`` are eligible. Ties go to the earlier index.
    """
    n = len(estimate)
    ok = list(eligible) if eligible is not None else [True] * n
    ranked = sorted(range(n), key=lambda i: (not ok[i], float(estimate[i]), i))
    return sorted(ranked[: max(0, keep)])
