"""Candidate harmfulness readouts, their held-out scores, and the choice among them.

A :class:`Candidate` is one place to read the harmfulness direction (layer, pool, shrinkage,
span) with the scores :func:`refusal_probe.monitor.harmfulness.search_harmfulness` gave it
without the test split. :func:`choose` takes the *stable* candidate (``fpr_unseen`` not credibly
above ``tolerance * target_fpr``) with the best worst case
``min(auroc_cv, auroc_shift, auroc_attack, tpr_attack)``; with no stable candidate, the one with
the lowest ``fpr_unseen``. :class:`HarmfulnessSearch` keeps every candidate and the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from refusal_probe.monitor.pooled import POOLS

#: Shrinkages searched by default (1: the plain difference of means).
DEFAULT_SHRINKAGES: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03)


@dataclass(frozen=True)
class Candidate:
    """One place to read the harmfulness direction, and its held-out scores.

    Attributes:
        layer: Block whose ``resid_post`` is read.
        span: One of :data:`refusal_probe.monitor.signals.SPANS`.
        auroc_cv: Two-fold held-out AUROC inside the fit split.
        auroc_shift: AUROC on the shift split (NaN when it lacks a class).
        fpr_unseen: False-positive rate on held-out groups of the fit split's harmless prompts
            at thresholds set for the target rate on the shift split's harmless prompts, the
            direction refit without each group (pooled over the groups).
        stable: ``fpr_unseen`` is not credibly above the tolerance (its Wilson interval's low
            end is within it).
        pool: What the direction is fit on, one of :data:`POOLS`.
        shrinkage: 1 for the difference of means, below 1 whitened (see the module docstring).
        auroc_attack: AUROC of the shift split's jailbreaks against its harmless prompts (NaN
            without jailbreaks).
        tpr_attack: Share of the shift split's jailbreaks above the threshold set for the
            target rate on its harmless prompts (NaN without jailbreaks).
        fpr_shift: False-positive rate on the shift split's harmless prompts at thresholds set
            for the target rate on held-out fit-split harmless prompts (mean of two folds);
            reported only.
    """

    layer: int
    span: str
    auroc_cv: float
    auroc_shift: float
    fpr_unseen: float
    stable: bool
    pool: str = "last_instruction"
    shrinkage: float = 1.0
    auroc_attack: float = math.nan
    tpr_attack: float = math.nan
    fpr_shift: float = math.nan

    @property
    def separation(self) -> float:
        """Worst held-out score of ``auroc_cv``, ``auroc_shift``, ``auroc_attack``, ``tpr_attack``.

        NaN scores are left out.
        """
        scores = (self.auroc_cv, self.auroc_shift, self.auroc_attack, self.tpr_attack)
        return min(x for x in scores if not math.isnan(x))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (NaN as ``None``)."""
        d = asdict(self)
        d["separation"] = self.separation
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


@dataclass(frozen=True)
class HarmfulnessSearch:
    """Every candidate readout, and the one chosen.

    Attributes:
        candidates: Layers x pools x shrinkages x spans, in search order.
        chosen: The chosen candidate.
        target_fpr: The false-positive rate thresholds aim for.
        tolerance: A candidate is stable unless ``fpr_unseen`` is credibly above
            ``tolerance * target_fpr``.
        rule: Why it was chosen, in words.
        n_attacks: Jailbreak prompts behind ``auroc_attack`` (0: none, the score is left out).
        groups: How ``fpr_unseen`` held harmless prompts out: ``category`` or ``halves``.
        n_groups: Groups held out in turn.
    """

    candidates: tuple[Candidate, ...]
    chosen: Candidate
    target_fpr: float
    tolerance: float
    rule: str
    n_attacks: int = 0
    groups: str = "halves"
    n_groups: int = 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "chosen": self.chosen.to_dict(),
            "rule": self.rule,
            "target_fpr": self.target_fpr,
            "tolerance": self.tolerance,
            "n_attacks": self.n_attacks,
            "groups": self.groups,
            "n_groups": self.n_groups,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def choose(
    candidates: Sequence[Candidate],
    spans: Sequence[str],
    tolerance: float,
    target_fpr: float,
    pools: Sequence[str] = POOLS,
    shrinkages: Sequence[float] = DEFAULT_SHRINKAGES,
) -> tuple[Candidate, str]:
    """The stable candidate that detects best, else the most stable one (see the module docstring).

    Ties go to the earlier layer, then the earlier span, pool and shrinkage in the order given.
    Returns the candidate and the rule that chose it, in words.
    """
    span_at = {s: i for i, s in enumerate(spans)}
    pool_at = {p: i for i, p in enumerate(pools)}
    shrink_at = {a: i for i, a in enumerate(shrinkages)}

    def order(c: Candidate) -> tuple[int, int, int, int]:
        return (
            c.layer,
            span_at.get(c.span, 0),
            pool_at.get(c.pool, 0),
            shrink_at.get(c.shrinkage, 0),
        )

    stable = [c for c in candidates if c.stable]
    if stable:
        best = max(stable, key=lambda c: (c.separation, *(-x for x in order(c))))
        return best, (
            "best worst case min(auroc_cv, auroc_shift, auroc_attack, tpr_attack) among the "
            f"{len(stable)} of {len(candidates)} candidates whose fpr_unseen is not credibly above "
            f"{tolerance:g} x {target_fpr:g}"
        )
    best = min(candidates, key=lambda c: (c.fpr_unseen, -c.separation, *order(c)))
    return best, (
        f"every candidate's fpr_unseen is credibly above {tolerance:g} x {target_fpr:g}; the "
        "one with the lowest fpr_unseen"
    )
