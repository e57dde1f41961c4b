"""Intervals: one :class:`Interval` type, the Wilson interval, and one bootstrap.

Axes: ``n`` samples of one class; ``B`` bootstrap resamples.

Every bootstrap interval in the package is drawn the same way: a :class:`Bootstrap` value
``(n_resamples, seed, level)`` draws each resample's ``n`` indices uniformly with replacement from
one seeded generator, kept as counts ``[B, n]`` (two-class statistics draw one count matrix per
class, in order: a stratified bootstrap), and reads the percentile interval off the resampled
statistics with the inverted-CDF quantile. A statistic that is a weighted sum uses the counts
directly (vectorised); any other statistic is evaluated on the index matrix the counts stand for
(:meth:`Bootstrap.indices`).

A percentile interval can, for small skewed samples, miss its own point estimate; such an interval
is widened to include the estimate, so ``low <= value <= high`` always holds. Rates and changes
of rates use closed-form score intervals instead (Wilson; Newcombe's for paired changes), which
do not collapse to a point when every outcome is the same.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Default number of bootstrap resamples.
N_RESAMPLES = 1000
#: Default seed of the bootstrap generator.
SEED = 0
#: Default confidence level.
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval.

    Attributes:
        value: The point estimate on the full sample (NaN when nothing was measured).
        low: Lower bound of the interval.
        high: Upper bound of the interval.
        level: Two-sided confidence level (0.95 for a 95% interval; 1.0 for an exact figure).
        method: How the interval was computed, in words (``"wilson"``, ``"paired bootstrap
            percentile (1000 resamples of prompts)"``, ``"exact"``, ...).
        n: Sample size behind the figure (trials of a rate, prompts, pairs), when there is one.
        k: Successes, for a proportion ``k / n``.
        n_resamples: Bootstrap resamples (0 for closed-form and exact intervals).
    """

    value: float
    low: float
    high: float
    level: float = LEVEL
    method: str = ""
    n: int | None = None
    k: int | None = None
    n_resamples: int = 0

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"interval [{self.low}, {self.high}] is reversed")

    def __str__(self) -> str:
        if self.k is not None:  # a proportion: two digits and the counts behind it
            return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] ({self.k}/{self.n})"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    @property
    def finite(self) -> bool:
        """Whether value and both bounds are finite numbers."""
        return all(math.isfinite(x) for x in (self.value, self.low, self.high))

    def straddles(self, threshold: float) -> bool:
        """Whether ``threshold`` lies inside the interval (a verdict would be inconclusive)."""
        return self.low <= threshold <= self.high

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (a non-finite value or bound becomes ``None``)."""
        d = asdict(self)
        for key in ("value", "low", "high"):
            d[key] = d[key] if math.isfinite(d[key]) else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interval:
        """Inverse of :meth:`to_dict`; ``None`` reads as NaN, missing keys take their defaults."""
        d = {k: v for k, v in d.items() if k in _FIELDS}
        for key in ("value", "low", "high"):
            d[key] = math.nan if d.get(key) is None else float(d[key])
        return cls(**d)

    @classmethod
    def exact(cls, value: float, method: str = "exact", n: int | None = None) -> Interval:
        """A figure without sampling error (its interval is the point)."""
        return cls(value, value, value, 1.0, method, n)

    @classmethod
    def nothing(cls, level: float = LEVEL, method: str = "nothing measured") -> Interval:
        """An interval of nothing measured (NaN value and bounds)."""
        return cls(math.nan, math.nan, math.nan, level, method)


_FIELDS = frozenset(Interval.__dataclass_fields__)


@dataclass(frozen=True)
class Bootstrap:
    """How every bootstrap interval is drawn: resamples, seed and confidence level.

    Attributes:
        n_resamples: Number of resamples ``B``.
        seed: Seed of the generator (the same value gives the same resamples).
        level: Two-sided confidence level of the percentile intervals.
    """

    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def __post_init__(self) -> None:
        if isinstance(self.n_resamples, bool) or self.n_resamples < 1:
            raise ValueError(f"n_resamples must be a positive integer, got {self.n_resamples!r}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level!r}")

    def counts(self, n: int) -> NDArray[np.float64]:
        """How often each of ``n`` items is drawn in each resample, ``[B, n]`` float64."""
        return self.stratified_counts(n)[0]

    def stratified_counts(self, *sizes: int) -> tuple[NDArray[np.float64], ...]:
        """One count matrix ``[B, size]`` per stratum, drawn in order from one generator.

        Raises:
            ValueError: A stratum is empty.
        """
        if any(s < 1 for s in sizes):
            raise ValueError(f"cannot resample an empty sample (sizes {sizes})")
        rng = np.random.default_rng(self.seed)
        b = self.n_resamples
        out = []
        for s in sizes:
            idx = rng.integers(0, s, size=(b, s))  # [B, s]: the items each resample draws
            flat = (idx + s * np.arange(b)[:, None]).reshape(-1)
            out.append(np.bincount(flat, minlength=b * s).reshape(b, s).astype(np.float64))
        return tuple(out)

    @staticmethod
    def indices(counts: NDArray[np.float64]) -> NDArray[np.int64]:
        """The resampled indices ``[B, n]`` that count matrix ``[B, n]`` stands for (sorted)."""
        b, n = counts.shape
        flat = np.repeat(np.tile(np.arange(n), b), counts.astype(np.int64).reshape(-1))
        return flat.reshape(b, n)

    def bounds(
        self, stats: NDArray[np.float64], value: NDArray[np.float64] | float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Percentile bounds per column of ``stats`` ``[B, ...]``, widened to contain ``value``.

        Resamples whose statistic is NaN (a ratio whose denominator vanished) are left out.
        """
        alpha = (1 - self.level) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN
            x = np.asarray(stats, dtype=np.float64)
            lo, hi = np.nanquantile(x, [alpha, 1 - alpha], axis=0, method="inverted_cdf")
        return np.minimum(lo, value), np.maximum(hi, value)

    def interval(
        self,
        value: float,
        stats: ArrayLike,
        method: str,
        *,
        n: int | None = None,
        k: int | None = None,
    ) -> Interval:
        """The percentile interval of a statistic from its resampled values ``[B]``."""
        lo, hi = self.bounds(np.asarray(stats, dtype=np.float64).reshape(-1), value)
        low, high = float(lo), float(hi)
        return Interval(float(value), low, high, self.level, method, n, k, self.n_resamples)

    def method(self, design: str = "", of: str = "") -> str:
        """The method in words: ``"paired bootstrap percentile (1000 resamples of pairs)"``.

        Args:
            design: ``""`` (one sample), ``"paired"``, ``"stratified"`` (each class resampled on
                its own, sizes fixed) or ``"two-sample"``.
            of: What is resampled (``"prompts"``, ``"pairs"``).
        """
        what = f" of {of}" if of else ""
        return f"{design} bootstrap percentile ({self.n_resamples} resamples{what})".strip()


# ---------------------------------------------------------------------------------------------
# proportions


def wilson_interval(k: int, n: int, level: float = LEVEL) -> Interval:
    """The Wilson score interval of a proportion (good coverage for small ``n``, rates near 0, 1).

    Args:
        k: Successes.
        n: Trials; ``0`` gives a NaN rate with the interval ``[0, 1]``.
        level: Confidence level.

    Returns:
        An :class:`Interval` with ``n``, ``k`` and method ``"wilson"``.
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Interval(math.nan, 0.0, 1.0, level, "wilson", 0, 0)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp float round-off so the bounds always hold the observed rate.
    low, high = min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)
    return Interval(p, low, high, level, "wilson", n, k)


def rate(
    outcomes: Sequence[bool] | ArrayLike,
    *,
    method: str = "wilson",
    boot: Bootstrap = Bootstrap(),
) -> Interval:
    """The proportion of true outcomes, with a Wilson (default) or bootstrap interval.

    The Wilson interval is at ``boot.level``; ``method="bootstrap"`` resamples the outcomes.
    """
    x = np.asarray(outcomes, dtype=bool).reshape(-1)
    k, n = int(x.sum()), int(x.size)
    if method == "wilson":
        return wilson_interval(k, n, boot.level)
    if method != "bootstrap":
        raise ValueError(f"unknown rate interval method {method!r}; use 'wilson' or 'bootstrap'")
    return dataclasses.replace(bootstrap_mean(x.astype(np.float64), boot), n=n, k=k)


# ---------------------------------------------------------------------------------------------
# bootstrap intervals of one sample, of paired samples, of two samples


def bootstrap(
    samples: ArrayLike,
    statistic: Callable[[NDArray[np.float64]], float],
    boot: Bootstrap = Bootstrap(),
) -> Interval:
    """Percentile bootstrap interval of any statistic of one sample.

    Args:
        samples: The sample, ``[n]`` (or ``[n, ...]``: rows are resampled).
        statistic: Maps a sample (rows in any order) to a number.
        boot: Resamples, seed and level.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError("cannot bootstrap an empty sample")
    idx = Bootstrap.indices(boot.counts(x.shape[0]))  # [B, n]
    stats = np.array([statistic(x[i]) for i in idx])
    return boot.interval(float(statistic(x)), stats, boot.method(), n=int(x.shape[0]))


def bootstrap_mean(samples: ArrayLike, boot: Bootstrap = Bootstrap(), *, of: str = "") -> Interval:
    """Percentile bootstrap interval of the mean (vectorised).

    Args:
        samples: The sample, flattened.
        boot: Resamples, seed and level.
        of: What the samples are, for the method's name (``"prompts"``).
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("cannot bootstrap the mean of an empty sample")
    means = boot.counts(x.size) @ x / x.size  # [B]
    return boot.interval(float(x.mean()), means, boot.method(of=of), n=int(x.size))


def paired_difference(
    after: ArrayLike, before: ArrayLike, boot: Bootstrap = Bootstrap(), *, of: str = "prompts"
) -> Interval:
    """Mean of ``after - before`` over paired items (the same prompts), with a bootstrap interval.

    For refusal outcomes (booleans) this is the change in refusal rate, resampling prompts so the
    pairing is kept: ``paired_difference(ablated, baseline)`` is negative when ablation lowers
    refusal.

    Raises:
        ValueError: The two samples differ in length or are empty.
    """
    a = np.asarray(after, dtype=np.float64).reshape(-1)
    b = np.asarray(before, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    return dataclasses.replace(bootstrap_mean(a - b, boot), method=boot.method("paired", of))


def paired_rate_difference(
    after: Sequence[bool] | ArrayLike, before: Sequence[bool] | ArrayLike, level: float = LEVEL
) -> Interval:
    """Change in a rate over paired yes/no outcomes, ``mean(after) - mean(before)``.

    Newcombe's hybrid score interval for paired proportions (his method 10): the two rates'
    Wilson intervals, combined with the correlation of the pairs. Unlike a percentile bootstrap it
    does not collapse when every pair moves the same way (40 of 40 refusals removed reads
    ``-1 [-1, -0.88]``, not ``-1 [-1, -1]``), and its coverage holds near 0 and 1.

    Raises:
        ValueError: The two samples differ in length, are empty, or are not yes/no outcomes.
    """
    a = np.asarray(after).reshape(-1)
    b = np.asarray(before).reshape(-1)
    if a.size != b.size or a.size == 0:
        raise ValueError(f"need two paired, non-empty samples, got {a.size} and {b.size}")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("paired_rate_difference takes yes/no outcomes; use paired_difference")
    a, b = a.astype(bool), b.astype(bool)
    n = int(a.size)
    both, only_a = int((a & b).sum()), int((a & ~b).sum())
    only_b, neither = int((~a & b).sum()), int((~a & ~b).sum())
    ra, rb = wilson_interval(both + only_a, n, level), wilson_interval(both + only_b, n, level)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    da, ua = ra.value - ra.low, ra.high - ra.value
    db, ub = rb.value - rb.low, rb.high - rb.value
    diff = ra.value - rb.value
    low = diff - math.sqrt(max(da * da - 2 * phi * da * ub + ub * ub, 0.0))
    high = diff + math.sqrt(max(ua * ua - 2 * phi * ua * db + db * db, 0.0))
    return Interval(diff, max(low, -1.0), min(high, 1.0), level, "newcombe paired score", n)


def two_sample_difference(a: ArrayLike, b: ArrayLike, boot: Bootstrap = Bootstrap()) -> Interval:
    """``mean(a) - mean(b)`` of two independent samples, each resampled on its own.

    Raises:
        ValueError: A sample is empty.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    cx, cy = boot.stratified_counts(x.size, y.size)  # [B, n_a], [B, n_b]
    diffs = cx @ x / x.size - cy @ y / y.size  # [B]
    n = int(x.size + y.size)
    return boot.interval(float(x.mean() - y.mean()), diffs, boot.method("two-sample"), n=n)


def rate_difference(a: Interval, b: Interval, boot: Bootstrap = Bootstrap()) -> Interval:
    """``a - b`` of two independently judged rates (intervals with ``k`` and ``n``).

    A rate with no trials gives an interval of nothing measured.
    """
    if not a.n or not b.n or a.k is None or b.k is None:
        return Interval.nothing(boot.level, boot.method("two-sample"))
    return two_sample_difference(_outcomes(a.k, a.n), _outcomes(b.k, b.n), boot)


def _outcomes(k: int, n: int) -> NDArray[np.float64]:
    """``k`` ones and ``n - k`` zeros: the outcomes behind a rate."""
    return (np.arange(n) < k).astype(np.float64)
