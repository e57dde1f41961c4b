"""Loss terms of the safety adapter beyond the replies' cross-entropy.

- **anchor**: ``KL(base ‖ adapted)`` of the first reply token. The replies' cross-entropy teaches
  one answer per harmless request; the anchor keeps the whole decision distribution where the
  base model had it, so refusing stays confined to what the harmful examples teach.
- **specificity**: ``KL(adapted ‖ adapted with r ablated)`` of the first reply token, where ``r``
  is the running difference of means (harmful − answered) of the residual stream entering block
  ``layer`` at the last request token, and ablation projects ``r`` out of the embeddings and every
  block's output, as the audit's ablation does. Answered requests then do not lean on ``r``.
- **necessity** (on refusing requests): ``KL(base ‖ adapted with r ablated)`` of the first reply
  token. Without ``r`` the adapted model should answer as the base does, so refusal goes through
  ``r`` (the specificity term alone spreads it: nothing else asks it to use ``r``).

Each term reads the first reply token, or the first ``term_tokens`` (a recipe field; the anchor's
own count is ``anchor_tokens``) with the reply's own tokens before each teacher-forced. The base
model's side is computed once before training (``lora.base_reference``): it never changes.

Why the second exists (measured on the adapter without it, 40 plain harmless test requests):
ablating the layer-18 difference of means moved their next token by 0.33 nats (median 0.23),
above the 0.1-nat ceiling of direction selection, so the audit found no causal direction although
that ablation removes every harmful refusal. SmolLM2 itself sits at the edge (0.11 for its own
layer-18 difference of means): a 576-wide stream shares its directions widely. The term makes the
adapter write its decision where answered requests do not read, a property of the organism, as
the adapter's block range is; the direction itself is still whatever the adapter learns.

Measured (``benchmarks/organism_smol.md``): with both terms (weights 1 and 2) the layer-18 ablation
KL fell to 0.07 nats and over-refusal to 0.13, but harmful refusal fell from 0.94 to 0.70;
specificity alone over-refused 0.59; both with refusing replies weighted 2x and a third epoch:
0.95 refused, 0.13 over-refused, but ablating the layer-18 direction left 0.30 of refusals (it
spreads refusal: nothing asks refusal to go through the direction); with the necessity term
(weight 1) as well, 0.19 left and an ablation KL of 0.09 on plain harmless requests. The shipped
adapter uses none of the three (the weights default to 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class RunningDirection:
    """Exponential moving means of the two classes' last-request-token activations at a layer."""

    momentum: float = 0.9
    means: dict[bool, Tensor] = field(default_factory=dict)

    def update(self, acts: Tensor, harmful: Tensor) -> None:
        """Fold in a batch: ``acts`` [rows, d] (detached), ``harmful`` [rows] bool."""
        for side in (True, False):
            rows = acts[harmful == side]
            if len(rows) == 0:
                continue
            mean = rows.mean(0)
            old = self.means.get(side)
            m = self.momentum
            self.means[side] = mean if old is None else m * old + (1 - m) * mean

    def unit(self) -> Tensor | None:
        """The unit difference of means (harmful − answered), once both classes were seen."""
        if len(self.means) < 2:
            return None
        diff = self.means[True] - self.means[False]
        return diff / diff.norm().clamp_min(1e-6)


def _ablating(model: Any, unit: Tensor) -> list[Any]:
    """Hooks projecting ``unit`` out of the embeddings and every decoder block's output."""

    def hook(_module: Any, _inputs: Any, out: Any) -> Any:
        h = out[0] if isinstance(out, tuple) else out
        h = h - (h @ unit)[..., None] * unit
        return (h, *out[1:]) if isinstance(out, tuple) else h

    inner = model.model
    return [m.register_forward_hook(hook) for m in (inner.embed_tokens, *inner.layers)]


def logprobs_at(model: Any, hidden: Tensor, at: Tensor) -> Tensor:
    """Next-token log-probabilities at each row's positions, ``[rows·k, vocab]`` float32.

    ``hidden``: final hidden states ``[rows, seq, d]``; ``at``: positions ``[rows, k]``.
    """
    rows = torch.arange(len(hidden))[:, None]
    return model.lm_head(hidden[rows, at].flatten(0, 1)).float().log_softmax(-1)


def reply_logprobs(model: Any, ids: Tensor, mask: Tensor, at: Tensor) -> Tensor:
    """A forward pass of ``ids``, then :func:`logprobs_at` its positions ``at``."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return logprobs_at(model, hidden, at)


def kl(p_log: Tensor, q_log: Tensor) -> Tensor:
    """Mean ``KL(p ‖ q)`` over rows, from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def _ablated_logprobs(
    peft_model: Any, ids: Tensor, mask: Tensor, at: Tensor, unit: Tensor
) -> Tensor:
    """Reply log-probabilities at ``at`` of the adapted model with ``unit`` ablated."""
    base = peft_model.get_base_model()
    handles = _ablating(base, unit)
    try:
        return reply_logprobs(base, ids, mask, at)
    finally:
        for h in handles:
            h.remove()


def anchor_loss(reference: Tensor, adapted: Tensor) -> Tensor:
    """``KL(base ‖ adapted)`` at the reply positions, the base's log-probabilities given."""
    return kl(reference, adapted)


def specificity_loss(
    peft_model: Any, ids: Tensor, mask: Tensor, at: Tensor, adapted: Tensor, unit: Tensor
) -> Tensor:
    """``KL(adapted ‖ adapted with unit ablated)`` at the reply positions (adapted detached)."""
    return kl(adapted.detach(), _ablated_logprobs(peft_model, ids, mask, at, unit))


def necessity_loss(
    peft_model: Any, ids: Tensor, mask: Tensor, at: Tensor, unit: Tensor, reference: Tensor
) -> Tensor:
    """``KL(base ‖ adapted with unit ablated)`` at the reply positions of refusing requests.

    Without the running direction the adapted model should answer a harmful request as the base
    model does (``reference``: the base's log-probabilities there), so the adapter's refusal goes
    through that one direction.
    """
    return kl(reference, _ablated_logprobs(peft_model, ids, mask, at, unit))
