"""How well refusal directions separate held-out prompts, and how two directions compare.

Axes: ``prompt`` (prompts of one class), ``layer`` (block index), ``pos`` (post-instruction
positions, as negative offsets from the end of the prompt), ``d`` (d_model).

A candidate of the grid (:class:`refusal_probe.direction.estimators.Candidates`) projects each
held-out activation onto its unit vector; the projections of harmful and harmless prompts give
AUROC, Cohen's d and accuracy with bootstrap intervals, layer by layer (:func:`separation_curve`).
Checkpoints are compared by the cosine of their candidates (:func:`cosine_per_layer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.capture import Activations
from refusal_probe.direction.estimators import Candidates, Direction, check_pair, offsets_of
from refusal_probe.errors import DirectionError
from refusal_probe.stats.intervals import Bootstrap
from refusal_probe.stats.separation import Separation, separation


def project(
    acts: Float[Tensor, "prompt d"], direction: Direction | Tensor
) -> Float[Tensor, " prompt"]:
    """Scalar projection of each activation on the unit direction, float64."""
    if not isinstance(direction, Direction):
        direction = Direction(direction, 0, -1, "raw", 0, 0)
    u = direction.unit
    if acts.shape[-1] != u.shape[0]:
        raise DirectionError(
            f"activations have width {acts.shape[-1]} but the direction has {u.shape[0]}"
        )
    return acts.double() @ u


@dataclass(frozen=True)
class LayerSeparation:
    """Separation of held-out harmful and harmless prompts by one layer's candidate.

    Attributes:
        layer: The layer.
        position: The position (negative offset).
        stats: AUROC, Cohen's d and best-threshold accuracy of the projection, with intervals.
    """

    layer: int
    position: int
    stats: Separation

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"layer": self.layer, "position": self.position, **self.stats.to_dict()}


def separation_curve(
    candidates: Candidates,
    harmful: Activations,
    harmless: Activations,
    position: int,
    boot: Bootstrap = Bootstrap(),
) -> list[LayerSeparation]:
    """Per-layer separation statistics of the candidates at ``position``, on held-out prompts.

    Args:
        candidates: The candidate grid.
        harmful: Held-out harmful activations at the candidates' sites and positions.
        harmless: Held-out harmless activations, likewise.
        position: Which position's candidates to use (negative offset).
        boot: Resamples, seed and level of the separation intervals.

    Raises:
        DirectionError: The held-out prompts are the ones the candidates were fit on, or the
            captures do not match the grid.
    """
    check_pair(harmful, harmless)
    if (
        harmful.prompts_sha256 == candidates.harmful_sha256
        or harmless.prompts_sha256 == candidates.harmless_sha256
    ):
        raise DirectionError(
            "separation must be measured on prompts the direction was not fit on; "
            "pass activations of another split"
        )
    layers = tuple(s.layer for s in harmful.sites)
    offsets = offsets_of(harmful)
    if position not in offsets or not set(candidates.layers) <= set(layers):
        raise DirectionError(
            f"held-out activations (layers {list(layers)}, positions {list(offsets)}) do "
            f"not cover the candidates at position {position}"
        )
    j = offsets.index(position)
    out = []
    for layer in candidates.layers:
        d = candidates.direction(layer, position)
        i = layers.index(layer)
        if d.is_zero:  # no direction: every prompt projects to 0, which separates nothing
            pos, neg = np.zeros(harmful.n_prompts), np.zeros(harmless.n_prompts)
        else:
            pos = project(harmful.values[:, i, j], d).numpy()
            neg = project(harmless.values[:, i, j], d).numpy()
        out.append(LayerSeparation(layer, position, separation(pos, neg, boot)))
    return out


def cosine_per_layer(a: Candidates, b: Candidates, position: int) -> list[float]:
    """Cosine similarity of two grids' candidates at ``position``, layer by layer.

    Used to compare checkpoints: a fine-tune that kept the refusal direction gives cosines near 1.

    Raises:
        DirectionError: The grids have different layers, positions or widths.
    """
    if a.layers != b.layers or a.offsets != b.offsets or a.vectors.shape != b.vectors.shape:
        raise DirectionError(f"cannot compare {a!r} with {b!r}: layers, positions or widths differ")
    if a.architecture and b.architecture and a.architecture != b.architecture:
        raise DirectionError(
            f"cannot compare directions of a {a.architecture} and a {b.architecture}"
        )
    j = a.offsets.index(position)
    va, vb = a.vectors[:, j], b.vectors[:, j]  # [layer, d]
    cos = torch.nn.functional.cosine_similarity(va, vb, dim=-1)
    return [float(c) for c in cos]


def cosine(a: Direction, b: Direction) -> float:
    """Cosine similarity of two directions of the same width."""
    if a.d_model != b.d_model:
        raise DirectionError(f"cannot compare {a!r} with {b!r}: widths differ")
    return float(a.unit @ b.unit)


def summarize_curve(curve: Sequence[LayerSeparation]) -> dict[str, list[float]]:
    """Columns of a separation curve for plotting: layer, AUROC with bounds, Cohen's d."""
    return {
        "layer": [c.layer for c in curve],
        "auroc": [c.stats.auroc.value for c in curve],
        "auroc_low": [c.stats.auroc.low for c in curve],
        "auroc_high": [c.stats.auroc.high for c in curve],
        "cohens_d": [c.stats.cohens_d.value for c in curve],
        "accuracy": [c.stats.accuracy.value for c in curve],
    }
