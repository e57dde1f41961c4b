"""Comparison between checkpoints: the circuit of a fine-tune against its parent's.

Top-k overlap (Jaccard) of the two circuits, and rank correlations of the component effects: of
the attribution effects over every candidate, and of the exact effects over the components both
runs confirmed exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from refusal_probe.errors import PatchingError
from refusal_probe.patching.circuit import CircuitResult, effect_map
from refusal_probe.patching.components import Component
from refusal_probe.patching.results import Agreement, agreement, spearman


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass(frozen=True)
class CircuitComparison:
    """The circuit of one checkpoint against another's (a fine-tune against its parent).

    Attributes:
        k: Size of the top-k sets compared.
        jaccard: Jaccard index of the two top-k sets.
        shared: Components in both top-k sets.
        only_a: Components only in the first.
        only_b: Components only in the second.
        spearman_attribution: Rank correlation of the attribution effects over every candidate.
        spearman_exact: Rank correlation of the exact effects over the components both patched
            exactly (NaN if fewer than 3).
        n_exact: Number of components behind ``spearman_exact``.
        restored: Fraction restored by each circuit (a, b).
    """

    k: int
    jaccard: float
    shared: tuple[Component, ...]
    only_a: tuple[Component, ...]
    only_b: tuple[Component, ...]
    spearman_attribution: float
    spearman_exact: float
    n_exact: int
    restored: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "k": self.k,
            "jaccard": self.jaccard,
            "shared": [str(c) for c in self.shared],
            "only_a": [str(c) for c in self.only_a],
            "only_b": [str(c) for c in self.only_b],
            "spearman_attribution": _num(self.spearman_attribution),
            "spearman_exact": _num(self.spearman_exact),
            "n_exact": self.n_exact,
            "restored": list(self.restored),
        }


def compare_circuits(a: CircuitResult, b: CircuitResult, k: int | None = None) -> CircuitComparison:
    """Overlap and rank correlation of two localized circuits (same architecture).

    Args:
        a: The parent's circuit (for example organism-chat).
        b: The fine-tune's circuit.
        k: Top-k size (default the smaller of the two circuits).

    Raises:
        PatchingError: The two results cover different candidate components (different
            architectures or spans).
    """
    attr_a, attr_b = effect_map(a.attribution.values()), effect_map(b.attribution.values())
    if set(attr_a) != set(attr_b):
        raise PatchingError(
            "the two circuits were localized over different candidate components (different "
            "architectures, kinds or spans); localize both with the same kinds and positions"
        )
    k = min(k or min(a.k, b.k), a.k, b.k)
    ta, tb = set(a.components[:k]), set(b.components[:k])
    ra: Agreement = agreement(attr_a, attr_b, k)
    common = [c for c in a.confirmed if c in b.confirmed]
    rho = (
        spearman(
            np.array([a.confirmed[c] for c in common]), np.array([b.confirmed[c] for c in common])
        )
        if len(common) >= 3
        else math.nan
    )
    return CircuitComparison(
        k,
        len(ta & tb) / len(ta | tb),
        tuple(sorted(ta & tb)),
        tuple(sorted(ta - tb)),
        tuple(sorted(tb - ta)),
        ra.spearman,
        rho,
        len(common),
        (a.fraction_restored.value, b.fraction_restored.value),
    )
