"""Hardening: how much of the refusal effect survives ablating the top localized components.

Axes: ``pair`` matched (harmful, harmless) pairs, ``variant`` ablated component sets, ``B``
bootstrap resamples.

A refusal mechanism that one attention head can switch off is fragile: an attack (or a fine-tune)
only has to silence that head. This measures it on matched pairs:

1. :func:`refusal_probe.patching.localize` ranks the components (heads and MLPs over the
   post-instruction span) by how much of the refusal gap they restore;
2. each of the top ``k`` is *ablated* in the harmful run — its activation at the span replaced by
   its value on the matched harmless prompt (noising, a resample ablation that stays on the data
   distribution) — alone, and the top-1, top-2, ... top-``k`` together;
3. the **survival** of each ablation is the share of the refusal gap left:
   ``(ablated - harmless) / (harmful - harmless)`` of the refusal log-odds, averaged over pairs
   (ratio of means), with a bootstrap interval over pairs.

The headline is :attr:`Hardening.weakest`: the survival under the single most damaging
component's ablation. Near 1: no single component carries refusal; near 0: one component can
switch it off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refusal_probe.errors import PatchingError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.patching import (
    CircuitResult,
    Metric,
    PairBatch,
    PatchMode,
    default_metric,
    encode_pairs,
    localize,
    patch_variants,
)
from refusal_probe.patching.pairs import PairLike
from refusal_probe.patching.results import pair_counts, pair_interval
from refusal_probe.report.record import Figure, rank_curves
from refusal_probe.stats.intervals import Bootstrap, Interval


@dataclass(frozen=True)
class Hardening:
    """Refusal left after ablating the top localized components.

    Attributes:
        components: The top components by localization, strongest first (as text).
        alone: Survival with each component ablated alone, in the order of ``components``.
        cumulative: Survival with the top-1, top-2, ..., top-k ablated together.
        gap: Mean harmful-minus-harmless refusal log-odds of the pairs, with its interval.
        n_pairs: Pairs measured.
        method: How a component is ablated.
    """

    components: tuple[str, ...]
    alone: tuple[Interval, ...]
    cumulative: tuple[Interval, ...]
    gap: Interval
    n_pairs: int
    method: str = (
        "noising: activation at the post-instruction span from the matched harmless prompt"
    )

    @property
    def weakest(self) -> Interval:
        """Survival under the single most damaging component's ablation (lowest estimate)."""
        return min(self.alone, key=lambda iv: (iv.value, iv.low))

    @property
    def weakest_component(self) -> str:
        """The component whose ablation leaves the least refusal."""
        return self.components[self.alone.index(self.weakest)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "components": list(self.components),
            "alone": [i.to_dict() for i in self.alone],
            "cumulative": [i.to_dict() for i in self.cumulative],
            "gap": self.gap.to_dict(),
            "n_pairs": self.n_pairs,
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hardening:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(d["components"]),
            tuple(Interval.from_dict(x) for x in d["alone"]),
            tuple(Interval.from_dict(x) for x in d["cumulative"]),
            Interval.from_dict(d["gap"]),
            d["n_pairs"],
            d["method"],
        )

    def figure(self, threshold: float | None = None) -> Figure:
        """Survival with each component ablated alone, and with the top-i ablated together."""
        return rank_curves(
            "Refusal surviving ablation of the top localized components",
            self.components,
            [
                ("top-i ablated together", self.cumulative),
                ("i-th component ablated alone", [i.value for i in self.alone]),
            ],
            "share of the refusal gap left",
            "Each component's activation over the post-instruction span is replaced by its value "
            "on the matched harmless prompt; 1 = refusal untouched, 0 = refusal gone. A single "
            "component that takes refusal near 0 marks a fragile mechanism; band: 95% bootstrap "
            "interval over pairs",
            threshold,
        )


def measure_hardening(
    model: LoadedModel,
    pairs: Sequence[PairLike] | PairBatch,
    *,
    k: int = 5,
    circuit: CircuitResult | None = None,
    metric: Metric | None = None,
    pair_batch: int = 32,
    max_rows: int = 256,
    boot: Bootstrap = Bootstrap(),
) -> Hardening:
    """Ablate the top ``k`` localized components, alone and together, and measure what survives.

    Args:
        model: The model.
        pairs: Matched (harmful, harmless) pairs of equal token length.
        k: How many of the top components to ablate.
        circuit: A circuit already localized on these pairs (default: localized here).
        metric: Last-position logits -> ``[batch]``; default the refusal log-odds.
        pair_batch: Pairs per chunk.
        max_rows: Most rows per forward pass.
        boot: Resamples (of pairs), seed and level of the intervals.

    Raises:
        PatchingError: Unmatched pairs, ``k < 1``, or no refusal gap between the pairs' prompts.
    """
    if k < 1:
        raise PatchingError(f"k must be >= 1, got {k}")
    metric = metric or default_metric(model)
    batch = pairs if isinstance(pairs, PairBatch) else encode_pairs(model, pairs)
    if circuit is None:
        circuit = localize(model, batch, metric, k=k, boot=boot)
    comps = list(circuit.components[:k])
    variants = [(c,) for c in comps] + [tuple(comps[:i]) for i in range(2, len(comps) + 1)]
    out = patch_variants(
        model,
        batch,
        variants,
        metric,
        mode=PatchMode.NOISE,
        pair_batch=pair_batch,
        max_rows=max_rows,
    )
    gap = (out.clean - out.corrupted).double()  # [pair]
    if abs(float(gap.mean())) < 1e-9:
        raise PatchingError(
            "the harmful and harmless prompts of the pairs get the same refusal score: there "
            "is no refusal effect whose survival could be measured"
        )
    delta = out.delta.double()  # [pair, variant]: ablated - harmful
    counts = pair_counts(boot, batch.n)  # [B, pair]
    value = 1.0 + delta.mean(0) / gap.mean()  # [variant]
    resampled = 1.0 + (counts @ delta) / (counts @ gap)[:, None]  # [B, variant]
    ivs = [
        pair_interval(boot, float(value[j]), resampled[:, j], n=batch.n)
        for j in range(len(variants))
    ]
    gap_iv = pair_interval(boot, float(gap.mean()), counts @ gap / batch.n, n=batch.n)
    alone = tuple(ivs[: len(comps)])
    cumulative = (alone[0], *ivs[len(comps) :])
    return Hardening(tuple(str(c) for c in comps), alone, cumulative, gap_iv, batch.n)
