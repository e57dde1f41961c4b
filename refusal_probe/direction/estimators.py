"""Refusal directions: the :class:`Direction` value and its estimators over a candidate grid.

Axes: ``prompt`` (prompts of one class), ``layer`` (block index; the site is the residual stream
entering the block), ``pos`` (post-instruction positions, as negative offsets from the end of the
prompt), ``d`` (d_model).

A *candidate* is the difference of class means (harmful - harmless) at one (layer, position); the
candidates of every layer and position form a :class:`Candidates` grid, from which selection picks
one. Every mean is accumulated in float64. How well a candidate separates held-out prompts, and
how two grids compare, is :mod:`refusal_probe.direction.separation`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.capture import Activations
from refusal_probe.errors import DirectionError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.stats.intervals import SEED

METHODS = ("diff_means", "pca_pairs")


@dataclass(frozen=True, eq=False)
class Direction:
    """A direction in the residual stream of one model.

    Attributes:
        vector: The raw vector, ``[d]``, float64 on the CPU (for ``diff_means`` its norm is the
            distance between the class means, which is what activation addition adds).
        layer: The block whose input (``resid_pre``) the direction was read at.
        position: Negative offset from the end of the prompt (``-1`` is the last prompt token).
        method: The estimator: ``diff_means`` or ``pca_pairs``.
        n_harmful: Harmful prompts it was fit on.
        n_harmless: Harmless prompts it was fit on.
        harmful_sha256: Fingerprint of the harmful prompts it was fit on.
        harmless_sha256: Fingerprint of the harmless prompts it was fit on.
        model_fingerprint: Identity fingerprint of the model it was read from.
        architecture: That model's architecture class; a direction applies only to the same one.
        site: The site kind it was read at (always ``resid_pre`` here).
    """

    vector: Float[Tensor, " d"]
    layer: int
    position: int
    method: str
    n_harmful: int
    n_harmless: int
    harmful_sha256: str = ""
    harmless_sha256: str = ""
    model_fingerprint: str = ""
    architecture: str = ""
    site: str = "resid_pre"

    def __post_init__(self) -> None:
        v = self.vector
        if not isinstance(v, Tensor) or v.ndim != 1:
            raise DirectionError(
                f"a direction's vector must be a 1-D tensor, got {type(v).__name__} "
                f"of shape {tuple(getattr(v, 'shape', ()))}"
            )
        if not torch.isfinite(v).all():
            raise DirectionError(
                "the direction's vector contains NaN or infinity; the activations it was "
                "fit on were not finite"
            )
        if self.position >= 0:
            raise DirectionError(
                f"position is a negative offset from the prompt's end, got {self.position}"
            )
        object.__setattr__(self, "vector", v.detach().to("cpu", torch.float64))

    def __repr__(self) -> str:
        return (
            f"Direction({self.method} @ L{self.layer}.{self.site} pos {self.position}, "
            f"d={self.d_model}, |r|={self.norm:.3g}, n={self.n_harmful}+{self.n_harmless})"
        )

    @property
    def d_model(self) -> int:
        """Width of the residual stream it lives in."""
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        """Euclidean norm of the raw vector."""
        return float(self.vector.norm())

    @property
    def is_zero(self) -> bool:
        """Whether the vector is zero (the class means coincide, as at layer-0 template tokens)."""
        return self.norm == 0.0

    @property
    def unit(self) -> Float[Tensor, " d"]:
        """The unit vector, float64.

        Raises:
            DirectionError: The vector is zero and has no direction.
        """
        if self.is_zero:
            raise DirectionError(
                f"{self!r} is the zero vector and has no direction; at layer 0 the "
                "post-instruction tokens are the same for every prompt, pick another candidate"
            )
        return self.vector / self.vector.norm()

    @property
    def sha256(self) -> str:
        """Fingerprint of the vector's float64 bytes."""
        return hashlib.sha256(self.vector.numpy().tobytes()).hexdigest()

    def flipped(self) -> Direction:
        """The same direction with its sign reversed."""
        return dataclasses.replace(self, vector=-self.vector)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the vector itself by its fingerprint and norm)."""
        return {
            "method": self.method,
            "layer": self.layer,
            "position": self.position,
            "site": self.site,
            "d_model": self.d_model,
            "norm": self.norm,
            "vector_sha256": self.sha256,
            "n_harmful": self.n_harmful,
            "n_harmless": self.n_harmless,
            "harmful_sha256": self.harmful_sha256,
            "harmless_sha256": self.harmless_sha256,
            "model_fingerprint": self.model_fingerprint,
            "architecture": self.architecture,
        }


def check_fits(model: LoadedModel, direction: Direction) -> None:
    """Raise :class:`DirectionError` unless ``direction`` can be applied to ``model``.

    A direction read from another checkpoint of the same architecture fits (that is how transfer
    between checkpoints is measured); one from another architecture or width does not.
    """
    if direction.d_model != model.d_model:
        raise DirectionError(
            f"{direction!r} has d_model {direction.d_model} but the model "
            f"{model.identity.spec!r} has {model.d_model}; use a direction read from this model "
            "or a checkpoint of the same architecture"
        )
    arch = model.identity.architecture
    if direction.architecture and direction.architecture != arch:
        raise DirectionError(
            f"{direction!r} was read from a {direction.architecture} but "
            f"{model.identity.spec!r} is a {arch}; directions only transfer between checkpoints "
            "of one architecture"
        )
    if direction.layer >= model.n_layers:
        raise DirectionError(
            f"{direction!r} is at layer {direction.layer} but {model.identity.spec!r} "
            f"has {model.n_layers} layers"
        )


# ---------------------------------------------------------------------------------------------
# the candidate grid


@dataclass(frozen=True, eq=False)
class Candidates:
    """One candidate vector per (layer, position).

    Attributes:
        vectors: ``[layer, pos, d]``, float64.
        layers: The layer of each row of ``vectors``.
        offsets: The position (negative offset) of each column.
        method: The estimator.
        n_harmful: Harmful prompts used.
        n_harmless: Harmless prompts used.
        harmful_sha256: Fingerprint of the harmful prompts.
        harmless_sha256: Fingerprint of the harmless prompts.
        model_fingerprint: The model's identity fingerprint.
        architecture: The model's architecture class.
    """

    vectors: Float[Tensor, "layer pos d"]
    layers: tuple[int, ...]
    offsets: tuple[int, ...]
    method: str
    n_harmful: int
    n_harmless: int
    harmful_sha256: str
    harmless_sha256: str
    model_fingerprint: str
    architecture: str = ""

    def __repr__(self) -> str:
        return (
            f"Candidates({self.method}, layers={len(self.layers)}, positions={list(self.offsets)}, "
            f"n={self.n_harmful}+{self.n_harmless})"
        )

    def __len__(self) -> int:
        return len(self.layers) * len(self.offsets)

    def direction(self, layer: int, position: int) -> Direction:
        """The candidate at ``layer`` and ``position`` (a negative offset), as a Direction."""
        try:
            i, j = self.layers.index(layer), self.offsets.index(position)
        except ValueError:
            raise DirectionError(
                f"no candidate at layer {layer}, position {position}; layers "
                f"{list(self.layers)}, positions {list(self.offsets)}"
            ) from None
        return Direction(
            self.vectors[i, j].clone(),
            layer,
            position,
            self.method,
            self.n_harmful,
            self.n_harmless,
            self.harmful_sha256,
            self.harmless_sha256,
            self.model_fingerprint,
            self.architecture,
        )

    def restrict(
        self, offsets: Sequence[int] | None = None, layers: Sequence[int] | None = None
    ) -> Candidates:
        """The grid at the given positions (negative offsets) and layers only; ``None``: all."""
        offsets = tuple(self.offsets if offsets is None else offsets)
        layers = tuple(self.layers if layers is None else layers)
        if (
            not offsets
            or not layers
            or not (set(offsets) <= set(self.offsets) and set(layers) <= set(self.layers))
        ):
            raise DirectionError(
                f"positions {list(offsets)} and layers {list(layers)} must be non-empty subsets of "
                f"the grid's {list(self.offsets)} and {list(self.layers)}"
            )
        i = [self.layers.index(x) for x in layers]
        j = [self.offsets.index(o) for o in offsets]
        vectors = self.vectors[i][:, j].clone()  # [len(layers), len(offsets), d]
        return dataclasses.replace(self, vectors=vectors, offsets=offsets, layers=layers)

    def all(self) -> list[Direction]:
        """Every candidate, layer-major."""
        return [self.direction(layer, p) for layer in self.layers for p in self.offsets]


def difference_of_means(
    harmful: Activations, harmless: Activations, *, architecture: str = ""
) -> Candidates:
    """Candidates ``mean(harmful) - mean(harmless)`` at every captured site and position (float64).

    Args:
        harmful: Activations of harmful prompts at ``resid_pre`` sites.
        harmless: Activations of harmless prompts at the same sites and positions.
        architecture: The model's architecture class, recorded in the directions.

    Raises:
        DirectionError: The two captures differ in sites, positions or width, a site is not
            ``resid_pre``, or an activation is not finite.
    """
    check_pair(harmful, harmless)
    vectors = harmful.mean() - harmless.mean()  # [site, pos, d], float64
    return _candidates(vectors, harmful, harmless, "diff_means", architecture)


def pca_of_differences(
    harmful: Activations, harmless: Activations, *, seed: int = SEED, architecture: str = ""
) -> Candidates:
    """Alternative estimator: first principal direction of paired differences (as in RepE).

    Harmful and harmless prompts are paired at random (seeded); the direction is the top right
    singular vector of the uncentred difference matrix, scaled to the length of the mean
    difference's projection on it and signed so that harmful prompts project higher.

    Raises:
        DirectionError: As :func:`difference_of_means`, or fewer than two pairs.
    """
    check_pair(harmful, harmless)
    n = min(harmful.n_prompts, harmless.n_prompts)
    if n < 2:
        raise DirectionError(f"PCA of paired differences needs at least 2 pairs, got {n}")
    g = torch.Generator().manual_seed(seed)
    hi = torch.randperm(harmful.n_prompts, generator=g)[:n]
    lo = torch.randperm(harmless.n_prompts, generator=g)[:n]
    diffs = harmful.values[hi].double() - harmless.values[lo].double()  # [pair, site, pos, d]
    diffs = diffs.permute(1, 2, 0, 3)  # [site, pos, pair, d]
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    pc1 = vh[..., 0, :]  # [site, pos, d]
    mean_diff = harmful.mean() - harmless.mean()
    along = (mean_diff * pc1).sum(-1, keepdim=True)  # signed length of the mean difference on pc1
    return _candidates(pc1 * along, harmful, harmless, "pca_pairs", architecture)


def check_pair(harmful: Activations, harmless: Activations) -> None:
    """Check that two classes' activations were read at the same sites and positions.

    Raises:
        DirectionError: They were not.
    """
    if harmful.sites != harmless.sites or harmful.positions != harmless.positions:
        raise DirectionError(
            "harmful and harmless activations were captured at different sites or "
            "positions; capture both with the same sites and positions"
        )
    if harmful.values.shape[2:] != harmless.values.shape[2:]:
        raise DirectionError(
            f"activation shapes differ: {tuple(harmful.values.shape)} vs "
            f"{tuple(harmless.values.shape)}"
        )
    if harmful.model_fingerprint != harmless.model_fingerprint:
        raise DirectionError("harmful and harmless activations come from different models")
    if any(s.kind != "resid_pre" for s in harmful.sites):
        raise DirectionError(
            "refusal directions are read at resid_pre sites; capture Site(layer, 'resid_pre')"
        )
    if harmful.positions.kind == "last_instruction":
        raise DirectionError(
            "directions need positions at fixed offsets from the prompt's end; capture "
            "POST_INSTRUCTION, LAST or explicit offsets"
        )
    for name, acts in (("harmful", harmful), ("harmless", harmless)):
        if acts.n_prompts == 0:
            raise DirectionError(f"no {name} activations; pass at least one prompt per class")
        if not torch.isfinite(acts.values).all():
            raise DirectionError(
                f"{name} activations contain NaN or infinity; check the model's dtype "
                "(float16 overflows) and its weights"
            )


def offsets_of(acts: Activations, n_post: int | None = None) -> tuple[int, ...]:
    """The negative offsets a capture's positions stand for."""
    p = acts.positions
    if p.kind == "explicit":
        return tuple(p.offsets)
    if p.kind == "last":
        return (-1,)
    n = int(acts.values.shape[2]) if n_post is None else n_post
    return tuple(range(-n, 0))


def _candidates(
    vectors: Tensor, harmful: Activations, harmless: Activations, method: str, architecture: str
) -> Candidates:
    # A gap below float32 resolution is no gap: the same template token at layer 0 gives exactly
    # equal activations in both classes, and rounding must not turn that into a direction.
    scale = harmful.values.double().norm(dim=-1).mean(0)  # [site, pos]
    vectors = torch.where(
        (vectors.norm(dim=-1) <= 1e-6 * scale)[..., None], torch.zeros_like(vectors), vectors
    )
    return Candidates(
        vectors=vectors.contiguous(),
        layers=tuple(s.layer for s in harmful.sites),
        offsets=offsets_of(harmful),
        method=method,
        n_harmful=harmful.n_prompts,
        n_harmless=harmless.n_prompts,
        harmful_sha256=harmful.prompts_sha256,
        harmless_sha256=harmless.prompts_sha256,
        model_fingerprint=harmful.model_fingerprint,
        architecture=architecture,
    )
