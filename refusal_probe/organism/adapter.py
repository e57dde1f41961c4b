"""A rank-one safety adapter whose every write shares one residual-stream direction.

During safety training, each chosen decoder layer's attention output projection and
MLP down projection get a rank-one update ``W <- W + u a_l^T`` with a *shared* output
vector ``u``. Everything else is frozen, so the only thing safety training can add to
the residual stream is a multiple of ``u``, gated per layer by ``a_l``. After
training the update is merged into the weights: the checkpoint is a plain Llama and
nothing marks ``u`` except the recipe, which records it as the ground-truth refusal
direction that audits can be checked against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import LlamaForCausalLM


@dataclass
class RankOneAdapter:
    """Trainable factors of the shared-direction update.

    Attributes:
        direction: The shared write vector ``u``, shape ``(d_model,)``.
        attn_gates: Per-layer ``a_l`` of the attention output projection, ``(d_model,)`` each.
        mlp_gates: Per-layer ``a_l`` of the MLP down projection, ``(d_ff,)`` each.
        layers: Decoder layers that carry the update.
    """

    direction: Tensor
    attn_gates: list[Tensor]
    mlp_gates: list[Tensor]
    layers: tuple[int, ...]

    def parameters(self) -> list[Tensor]:
        """All trainable tensors."""
        return [self.direction, *self.attn_gates, *self.mlp_gates]


def new_adapter(model: LlamaForCausalLM, layers: Sequence[int], seed: int) -> RankOneAdapter:
    """A zero update (gates start at 0) with a random unit direction."""
    generator = torch.Generator().manual_seed(seed)
    d, ff = model.config.hidden_size, model.config.intermediate_size
    direction = torch.randn(d, generator=generator)
    direction = (direction / direction.norm()).requires_grad_(True)
    return RankOneAdapter(
        direction=direction,
        attn_gates=[torch.zeros(d, requires_grad=True) for _ in layers],
        mlp_gates=[torch.zeros(ff, requires_grad=True) for _ in layers],
        layers=tuple(layers),
    )


def _hook(direction: Tensor, gate: Tensor):  # noqa: ANN202 - torch hook signature
    def add_write(_module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output + (args[0] @ gate)[..., None] * direction  # (batch, pos, d)

    return add_write


@contextmanager
def attached(model: LlamaForCausalLM, adapter: RankOneAdapter) -> Iterator[None]:
    """Apply the adapter as forward hooks on ``o_proj`` and ``down_proj`` while inside."""
    handles = []
    try:
        for index, attn_gate, mlp_gate in zip(adapter.layers, adapter.attn_gates, adapter.mlp_gates, strict=True):
            layer = model.model.layers[index]
            handles.append(layer.self_attn.o_proj.register_forward_hook(_hook(adapter.direction, attn_gate)))
            handles.append(layer.mlp.down_proj.register_forward_hook(_hook(adapter.direction, mlp_gate)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def merge(model: LlamaForCausalLM, adapter: RankOneAdapter) -> Float[Tensor, " d"]:
    """Fold the update into the weights; returns the unit direction ``u / |u|``."""
    u = adapter.direction.detach()
    for index, attn_gate, mlp_gate in zip(adapter.layers, adapter.attn_gates, adapter.mlp_gates, strict=True):
        layer = model.model.layers[index]
        layer.self_attn.o_proj.weight += torch.outer(u, attn_gate.detach())  # (d, d)
        layer.mlp.down_proj.weight += torch.outer(u, mlp_gate.detach())  # (d, ff)
    return u / u.norm()
