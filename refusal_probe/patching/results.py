"""Patching results as data: normalized effects with bootstrap intervals, ready for heatmaps.

Axes: ``pair`` matched pairs, ``B`` bootstrap resamples, ``comp`` components (the grid flattened in
row-major order), then the grid's own axes (``layer``, ``head``, ``pos``).

The effect of a component is normalized by the clean-vs-corrupted metric gap, as a ratio of means
over pairs (a pair with a tiny gap cannot blow it up):

* denoising: ``mean(patched - corrupted) / mean(clean - corrupted)`` — the fraction of the refusal
  gap that restoring the component's clean activation brings back (1 = all of it);
* noising: ``mean(clean - patched) / mean(clean - corrupted)`` — the fraction that patching in the
  corrupted activation destroys.

Intervals resample pairs and recompute that ratio: the package's one bootstrap
(:class:`~refusal_probe.stats.intervals.Bootstrap`), paired (clean and corrupted run of a pair are
drawn together), percentile, seeded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from refusal_probe.errors import PatchingError
from refusal_probe.patching.components import Component, Grid
from refusal_probe.patching.mode import PatchMode
from refusal_probe.stats.intervals import Bootstrap, Interval

# Below this mean gap (in metric units) the runs do not differ and effects are undefined (NaN).
_MIN_GAP = 1e-9


def effects(delta: Tensor, gap: Tensor, sign: float) -> Tensor:
    """``sign * mean(delta) / mean(gap)`` over pairs (axis 0); NaN where the gap vanishes."""
    g = float(gap.mean())
    if abs(g) < _MIN_GAP:
        return torch.full(delta.shape[1:], math.nan, dtype=torch.float64)
    return sign * delta.mean(0) / g


def bootstrap_effects(delta: Tensor, gap: Tensor, sign: float, counts: Tensor) -> Tensor:
    """Effects on each resample of the pairs, ``[B, comp]``; ``counts`` is :func:`pair_counts`."""
    n = delta.shape[0]
    d = counts @ delta.reshape(n, -1) / n  # [B, comp]
    g = counts @ gap / n  # [B]
    g = torch.where(g.abs() < _MIN_GAP, torch.full_like(g, math.nan), g)
    return sign * d / g[:, None]


def pair_counts(boot: Bootstrap, n: int) -> Tensor:
    """How often each of ``n`` pairs is drawn in each resample, ``[B, pair]`` float64."""
    return torch.from_numpy(boot.counts(n))


def bounds(boot: Bootstrap, stats: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """Percentile bounds per column of ``stats`` ``[B, ...]``, widened to contain ``value``."""
    lo, hi = boot.bounds(stats.double().numpy(), value.double().numpy())
    return torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)


def pair_interval(
    boot: Bootstrap, value: float, samples: Tensor, *, n: int | None = None
) -> Interval:
    """A scalar interval from its values on resampled pairs ``[B]``; ``n``: the pairs."""
    return boot.interval(float(value), samples.double().numpy(), pair_method(boot), n=n)


def pair_method(boot: Bootstrap) -> str:
    """How every interval over pairs is drawn, in words."""
    return boot.method("paired", "pairs")


@dataclass(frozen=True, eq=False)
class PatchResult:
    """Effects of patching every component of one grid, with intervals.

    Attributes:
        grid: The grid name (``resid``, ``head``, ``head_pos``, ``mlp``, ``mlp_pos``).
        method: ``exact`` (batched), ``reference`` (one forward per component) or ``attribution``.
        mode: ``PatchMode.DENOISE`` or ``PatchMode.NOISE``.
        axes: Axis names of the grid, e.g. ``("layer", "head", "pos")``.
        labels: Tick labels per axis (layer/head indices, negative position offsets).
        components: The components, in row-major order over ``axes``.
        effect: Normalized effect per component, shaped like the grid, float64.
        low: Lower bound of each effect's interval.
        high: Upper bound of each effect's interval.
        delta: Raw metric change per pair, ``[pair, *grid]`` (attribution: its estimate).
        clean: Metric of each clean (harmful) run, ``[pair]``.
        corrupted: Metric of each corrupted (harmless) run, ``[pair]``.
        pair_ids: Ids of the pairs, in order.
        metric: Name of the metric.
        model_fingerprint: The model's identity fingerprint.
        boot: The bootstrap behind the intervals (resamples, seed, level).
        forwards: Forward passes the computation took (a backward counts as one).
        seconds: Wall time of the computation.
    """

    grid: str
    method: str
    mode: PatchMode
    axes: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]
    components: tuple[Component, ...]
    effect: Tensor
    low: Tensor
    high: Tensor
    delta: Tensor
    clean: Tensor
    corrupted: Tensor
    pair_ids: tuple[str, ...]
    metric: str
    model_fingerprint: str
    boot: Bootstrap = Bootstrap()
    forwards: int = 0
    seconds: float = 0.0

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.effect.shape)
        return (
            f"PatchResult({self.method} {self.mode} {self.grid} [{shape}], "
            f"{len(self.pair_ids)} pairs, "
            f"gap {self.gap()})"
        )

    @property
    def n_pairs(self) -> int:
        """Number of pairs."""
        return len(self.pair_ids)

    @property
    def sign(self) -> float:
        """+1 for denoising, -1 for noising (see the module docstring)."""
        return self.mode.sign

    def flat(self) -> Tensor:
        """Effects in component order, ``[comp]``."""
        return self.effect.reshape(-1)

    def gap(self) -> Interval:
        """Mean clean-minus-corrupted metric over pairs, with its bootstrap interval."""
        g = self.clean - self.corrupted
        counts = pair_counts(self.boot, len(g))  # [B, pair]
        return pair_interval(self.boot, float(g.mean()), counts @ g / len(g), n=len(g))

    def value(self, component: Component) -> float:
        """The effect of one component."""
        try:
            return float(self.flat()[self.components.index(component)])
        except ValueError:
            raise PatchingError(f"{component} is not in this {self.grid} result") from None

    def ranked(self) -> list[tuple[Component, float]]:
        """All components, largest absolute effect first (NaN last)."""
        flat = self.flat().tolist()
        order = sorted(
            range(len(flat)), key=lambda i: -abs(flat[i]) if not math.isnan(flat[i]) else math.inf
        )
        return [(self.components[i], flat[i]) for i in order]

    def top(self, k: int = 10) -> list[tuple[Component, float]]:
        """The ``k`` components with the largest absolute effect."""
        return self.ranked()[:k]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready heatmap data: axes, tick labels, effects and intervals as nested lists."""
        return {
            "grid": self.grid,
            "method": self.method,
            "mode": self.mode.value,
            "axes": list(self.axes),
            "labels": {a: list(lab) for a, lab in zip(self.axes, self.labels, strict=True)},
            "effect": _nested(self.effect),
            "low": _nested(self.low),
            "high": _nested(self.high),
            "level": self.boot.level,
            "n_resamples": self.boot.n_resamples,
            "n_pairs": self.n_pairs,
            "pair_ids": list(self.pair_ids),
            "gap": self.gap().to_dict(),
            "clean_mean": float(self.clean.mean()),
            "corrupted_mean": float(self.corrupted.mean()),
            "metric": self.metric,
            "model_fingerprint": self.model_fingerprint,
            "top": [{"component": str(c), "effect": _num(v)} for c, v in self.top(10)],
            "forwards": self.forwards,
            "seconds": self.seconds,
        }


def make_result(
    grid: Grid,
    method: str,
    mode: PatchMode | str,
    delta: Tensor,
    clean: Tensor,
    corrupted: Tensor,
    *,
    pair_ids: Sequence[str],
    metric: str,
    model_fingerprint: str,
    boot: Bootstrap = Bootstrap(),
    forwards: int = 0,
    seconds: float = 0.0,
) -> PatchResult:
    """Normalize per-pair deltas ``[pair, comp]`` into a :class:`PatchResult` with intervals."""
    mode = PatchMode.of(mode)
    sign = mode.sign
    gap = clean - corrupted
    eff = effects(delta, gap, sign)
    resampled = bootstrap_effects(delta, gap, sign, pair_counts(boot, delta.shape[0]))
    low, high = bounds(boot, resampled, eff)
    shape = grid.shape
    return PatchResult(
        grid.name,
        method,
        mode,
        grid.axes,
        grid.labels,
        grid.components,
        eff.reshape(shape),
        low.reshape(shape),
        high.reshape(shape),
        delta.reshape(-1, *shape),
        clean,
        corrupted,
        tuple(pair_ids),
        metric,
        model_fingerprint,
        boot,
        forwards,
        seconds,
    )


# ---------------------------------------------------------------------------------------------
# agreement between two rankings


@dataclass(frozen=True)
class Agreement:
    """How well two sets of effects over the same components agree.

    Attributes:
        spearman: Spearman rank correlation of the effects (NaN if either is constant).
        pearson: Pearson correlation of the effects.
        top_k_overlap: Share of the first result's top-k (by absolute effect) in the second's top-k.
        jaccard: Jaccard index of the two top-k sets.
        k: The k used.
        n: Number of components compared.
    """

    spearman: float
    pearson: float
    top_k_overlap: float
    jaccard: float
    k: int
    n: int

    def __str__(self) -> str:
        return (
            f"Spearman {self.spearman:.3f}, Pearson {self.pearson:.3f}, top-{self.k} overlap "
            f"{self.top_k_overlap:.2f} (Jaccard {self.jaccard:.2f}), n={self.n}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "spearman": _num(self.spearman),
            "pearson": _num(self.pearson),
            "top_k_overlap": self.top_k_overlap,
            "jaccard": self.jaccard,
            "k": self.k,
            "n": self.n,
        }


def agreement(
    a: PatchResult | dict[Component, float], b: PatchResult | dict[Component, float], k: int = 10
) -> Agreement:
    """Agreement of two results on the components they share (ranking by absolute effect)."""
    da, db = _as_map(a), _as_map(b)
    common = [c for c in da if c in db and not (math.isnan(da[c]) or math.isnan(db[c]))]
    if len(common) < 2:
        raise PatchingError(
            f"only {len(common)} components are shared by the two results; "
            "compare results over the same components"
        )
    x = np.array([da[c] for c in common])
    y = np.array([db[c] for c in common])
    kk = min(k, len(common))
    ta = set(top_k(dict(zip(common, x, strict=True)), kk))
    tb = set(top_k(dict(zip(common, y, strict=True)), kk))
    return Agreement(
        spearman(x, y), _corr(x, y), len(ta & tb) / kk, len(ta & tb) / len(ta | tb), kk, len(common)
    )


def top_k(values: dict[Component, float], k: int) -> list[Component]:
    """The ``k`` components with the largest absolute value (ties broken by component order)."""
    return sorted(values, key=lambda c: (-abs(values[c]), c))[:k]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return _corr(_ranks(np.asarray(x, float)), _ranks(np.asarray(y, float)))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    # average the ranks of tied values
    uniq, inv = np.unique(x, return_inverse=True)
    sums = np.bincount(inv, weights=ranks)
    counts = np.bincount(inv)
    return (sums / counts)[inv] if len(uniq) < len(x) else ranks


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _as_map(r: PatchResult | dict[Component, float]) -> dict[Component, float]:
    if isinstance(r, PatchResult):
        return dict(zip(r.components, r.flat().tolist(), strict=True))
    return dict(r)


def _num(x: float) -> float | None:
    """JSON has no NaN: map it to ``None``."""
    return None if math.isnan(x) else float(x)


def _nested(t: Tensor) -> Any:
    """A tensor as nested lists with NaN as ``None``."""
    if t.ndim == 0:
        return _num(float(t))
    return [_nested(x) for x in t]
