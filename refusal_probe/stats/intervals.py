"""Statistics with confidence intervals: rates, bootstrap intervals and separation measures.

Axes: ``n`` samples of one class; ``B`` bootstrap resamples.

Every interval here is a 95% interval by default. Bootstrap intervals are percentile intervals over
:data:`N_RESAMPLES` resamples drawn from a seeded generator, so a run is reproducible. Two-class
statistics resample each class separately (a stratified bootstrap: the class sizes stay fixed).

A percentile interval can, for small skewed samples, miss its own point estimate; such an interval
is widened to include the estimate, so ``low <= value <= high`` always holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike, NDArray

from refusal_probe.errors import MonitorError

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
        value: The point estimate on the full sample.
        low: Lower bound of the interval.
        high: Upper bound of the interval.
        level: Confidence level (0.95 for a 95% interval).
        method: How the interval was computed (``"bootstrap-percentile"``, ``"wilson"``, ...).
        n_resamples: Bootstrap resamples (0 for closed-form intervals).
    """

    value: float
    low: float
    high: float
    level: float = LEVEL
    method: str = "bootstrap-percentile"
    n_resamples: int = 0

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def straddles(self, threshold: float) -> bool:
        """Whether ``threshold`` lies inside the interval (a verdict would be inconclusive)."""
        return self.low <= threshold <= self.high

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interval:
        """Inverse of :meth:`to_dict`; ``None`` (a non-finite number in JSON) reads as NaN."""
        d = dict(d)
        for key in ("value", "low", "high"):
            d[key] = math.nan if d.get(key) is None else d[key]
        return cls(**d)


@dataclass(frozen=True)
class Rate:
    """A proportion ``k / n`` with a confidence interval.

    Attributes:
        value: The observed proportion (NaN when ``n == 0``).
        low: Lower bound of the interval.
        high: Upper bound of the interval.
        n: Number of trials.
        k: Number of successes.
        level: Confidence level.
        method: ``"wilson"`` or ``"bootstrap-percentile"``.
    """

    value: float
    low: float
    high: float
    n: int
    k: int
    level: float = LEVEL
    method: str = "wilson"

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] ({self.k}/{self.n})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class Separation:
    """How well a scalar score separates two classes (positives score higher).

    Attributes:
        auroc: Area under the ROC curve (ties count one half), with its interval.
        cohens_d: Difference of class means over the pooled standard deviation.
        accuracy: Accuracy of the best single threshold (positives above it).
        threshold: That threshold, on the full sample.
        n_pos: Number of positives.
        n_neg: Number of negatives.
    """

    auroc: Interval
    cohens_d: Interval
    accuracy: Interval
    threshold: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def wilson_interval(k: int, n: int, level: float = LEVEL) -> Rate:
    """The Wilson score interval of a proportion (good coverage for small ``n``, rates near 0, 1).

    Args:
        k: Successes.
        n: Trials; ``0`` gives a NaN rate with the interval ``[0, 1]``.
        level: Confidence level.
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(math.nan, 0.0, 1.0, 0, 0, level, "wilson")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp float round-off so the bounds always hold the observed rate.
    return Rate(
        p, min(max(0.0, centre - half), p), max(min(1.0, centre + half), p), n, k, level, "wilson"
    )


def rate(
    outcomes: Sequence[bool] | ArrayLike,
    *,
    method: str = "wilson",
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Rate:
    """The proportion of true outcomes, with a Wilson (default) or bootstrap interval."""
    x = np.asarray(outcomes, dtype=bool)
    k, n = int(x.sum()), int(x.size)
    if method == "wilson":
        return wilson_interval(k, n, level)
    if method != "bootstrap":
        raise ValueError(f"unknown rate interval method {method!r}; use 'wilson' or 'bootstrap'")
    iv = bootstrap_mean(x.astype(np.float64), n_resamples=n_resamples, seed=seed, level=level)
    return Rate(iv.value, iv.low, iv.high, n, k, level, iv.method)


# ---------------------------------------------------------------------------------------------
# one-sample bootstrap


def bootstrap(
    samples: ArrayLike,
    statistic: Callable[[NDArray[np.float64]], float],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """Percentile bootstrap interval of any statistic of one sample.

    Args:
        samples: The sample, ``[n]`` (or ``[n, ...]``: rows are resampled).
        statistic: Maps a resampled array to a number.
        n_resamples: Number of resamples.
        seed: Seed of the generator.
        level: Confidence level.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.shape[0] == 0:
        raise ValueError("cannot bootstrap an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_resamples, x.shape[0]))
    stats = np.array([statistic(x[i]) for i in idx])
    return _percentile(float(statistic(x)), stats, level, n_resamples)


def bootstrap_mean(
    samples: ArrayLike, *, n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """Percentile bootstrap interval of the mean (vectorised)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("cannot bootstrap the mean of an empty sample")
    counts = _counts(np.random.default_rng(seed), x.size, n_resamples)  # [B, n]
    return _percentile(float(x.mean()), counts @ x / x.size, level, n_resamples)


def paired_difference(
    after: ArrayLike,
    before: ArrayLike,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
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
    return bootstrap_mean(a - b, n_resamples=n_resamples, seed=seed, level=level)


# ---------------------------------------------------------------------------------------------
# two-class separation


def auroc(pos: ArrayLike, neg: ArrayLike) -> float:
    """P(score of a positive > score of a negative), ties counted one half."""
    h = _pairwise(*_two(pos, neg))
    return float(h.mean())


def cohens_d(pos: ArrayLike, neg: ArrayLike) -> float:
    """(mean(pos) - mean(neg)) / pooled standard deviation (ddof 1); ±inf for constant classes."""
    p, n = _two(pos, neg)
    return float(_cohens_d_weighted(p, n, np.ones((1, p.size)), np.ones((1, n.size)))[0])


def best_threshold_accuracy(pos: ArrayLike, neg: ArrayLike) -> tuple[float, float]:
    """Best accuracy of the rule "positive if score > t", and that ``t``."""
    p, n = _two(pos, neg)
    x, y, ends = _sorted_groups(p, n)
    acc, best = _accuracy_weighted(y, ends, np.ones((1, x.size)), p.size, n.size)
    return float(acc[0]), _threshold(x, ends, int(best[0]))


def separation(
    pos: Float[np.ndarray, " n_pos"] | ArrayLike,
    neg: Float[np.ndarray, " n_neg"] | ArrayLike,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Separation:
    """AUROC, Cohen's d and best-threshold accuracy, each with a stratified bootstrap interval.

    One set of resamples serves all three statistics. Resampling is done exactly with
    multiplicity weights, so no statistic is recomputed per resample in Python.

    Args:
        pos: Scores of the positive class (for refusal: harmful prompts' projections).
        neg: Scores of the negative class.
        n_resamples: Number of resamples (default :data:`N_RESAMPLES`).
        seed: Seed of the generator.
        level: Confidence level.

    Raises:
        ValueError: A class is empty or a score is not finite.
    """
    p, n = _two(pos, neg)
    rng = np.random.default_rng(seed)
    cp, cn = (
        _counts(rng, p.size, n_resamples),
        _counts(rng, n.size, n_resamples),
    )  # [B, n_pos], [B, n_neg]
    h = _pairwise(p, n)  # [n_pos, n_neg]
    auc_b = np.einsum("bi,ij,bj->b", cp, h, cn) / (p.size * n.size)
    d_b = _cohens_d_weighted(p, n, cp, cn)
    x, y, ends = _sorted_groups(p, n)
    order = np.argsort(np.concatenate([p, n]), kind="stable")
    acc_b, _ = _accuracy_weighted(
        y, ends, np.concatenate([cp, cn], axis=1)[:, order], p.size, n.size
    )
    acc, t = best_threshold_accuracy(p, n)
    return Separation(
        auroc=_percentile(float(h.mean()), auc_b, level, n_resamples),
        cohens_d=_percentile(cohens_d(p, n), d_b, level, n_resamples),
        accuracy=_percentile(acc, acc_b, level, n_resamples),
        threshold=t,
        n_pos=p.size,
        n_neg=n.size,
    )


# ---------------------------------------------------------------------------------------------
# helpers


def _two(pos: ArrayLike, neg: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    p = np.asarray(pos, dtype=np.float64).reshape(-1)
    n = np.asarray(neg, dtype=np.float64).reshape(-1)
    if p.size == 0 or n.size == 0:
        raise ValueError(
            f"both classes need samples; got {p.size} positives and {n.size} negatives"
        )
    if not (np.isfinite(p).all() and np.isfinite(n).all()):
        raise ValueError("scores contain NaN or infinity; check the activations they came from")
    return p, n


def _counts(rng: np.random.Generator, n: int, n_resamples: int) -> NDArray[np.float64]:
    """Multiplicity of each item in each resample of size ``n``: ``[B, n]``."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)


def _pairwise(p: NDArray[np.float64], n: NDArray[np.float64]) -> NDArray[np.float64]:
    """``[n_pos, n_neg]``: 1 where the positive scores higher, 0.5 on a tie."""
    diff = p[:, None] - n[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def _cohens_d_weighted(
    p: NDArray[np.float64], n: NDArray[np.float64], cp: NDArray[np.float64], cn: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Cohen's d of each weighted resample (weights are multiplicities), ``[B]``."""
    mp, mn = cp @ p / p.size, cn @ n / n.size
    ssp = (cp * (p[None, :] - mp[:, None]) ** 2).sum(1)
    ssn = (cn * (n[None, :] - mn[:, None]) ** 2).sum(1)
    dof = max(p.size + n.size - 2, 1)
    sd = np.sqrt((ssp + ssn) / dof)
    diff = mp - mn
    with np.errstate(divide="ignore", invalid="ignore"):
        # Both classes constant: infinitely separated, or not at all.
        return np.where(sd > 0, diff / sd, np.where(diff == 0, 0.0, np.sign(diff) * np.inf))


def _sorted_groups(
    p: NDArray[np.float64], n: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Scores sorted ascending, their labels (1 = positive), the last index of each tie group."""
    x = np.concatenate([p, n])
    y = np.concatenate([np.ones(p.size), np.zeros(n.size)])
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    ends = np.flatnonzero(np.append(x[1:] != x[:-1], True))
    return x, y, ends


def _accuracy_weighted(
    y: NDArray[np.float64], ends: NDArray[np.int64], w: NDArray[np.float64], n_pos: int, n_neg: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Best accuracy per resample over thresholds between tie groups; ``w`` is ``[B, n]`` sorted.

    Returns the accuracies ``[B]`` and the index of the best cut (``-1``: below every score).
    """
    neg_le = np.cumsum(w * (1 - y), axis=1)[:, ends]  # negatives at or below each cut
    pos_le = np.cumsum(w * y, axis=1)[:, ends]
    acc = (neg_le + (n_pos - pos_le)) / (n_pos + n_neg)  # [B, n_groups]
    acc = np.concatenate([np.full((w.shape[0], 1), n_pos / (n_pos + n_neg)), acc], axis=1)
    best = acc.argmax(1)
    return acc.max(1), best - 1


def _threshold(x: NDArray[np.float64], ends: NDArray[np.int64], cut: int) -> float:
    if cut < 0:
        return float(x[0] - 1.0)
    if cut == len(ends) - 1:
        return float(x[-1])
    return float((x[ends[cut]] + x[ends[cut] + 1]) / 2)


def _percentile(
    value: float, stats: NDArray[np.float64], level: float, n_resamples: int
) -> Interval:
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha], method="inverted_cdf")
    return Interval(
        value,
        float(min(lo, value)),
        float(max(hi, value)),
        level,
        "bootstrap-percentile",
        n_resamples,
    )


def conformal_threshold(scores: ArrayLike, target_fpr: float) -> tuple[float, float]:
    """The threshold above which at most ``target_fpr`` of new negatives score, and its guarantee.

    With ``n`` negative scores, the ``k``-th smallest for ``k = ceil((n + 1)(1 - target_fpr))``
    is exceeded by a new exchangeable negative with probability at most ``(n + 1 - k) / (n + 1)
    <= target_fpr``. When ``k > n`` the sample is too small for the target; the largest score is
    returned and the guarantee is ``1 / (n + 1)``.

    Returns:
        ``(threshold, guaranteed_fpr)``.

    Raises:
        MonitorError: No scores, a non-finite score, or a target outside (0, 1).
    """
    x = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if x.size == 0:
        raise MonitorError("no calibration scores; pass at least one harmless prompt")
    if not np.isfinite(x).all():
        raise MonitorError("calibration scores contain NaN or infinity; check the activations")
    if not 0.0 < target_fpr < 1.0:
        raise MonitorError(f"target false-positive rate must be in (0, 1), got {target_fpr}")
    n = x.size
    k = math.ceil((n + 1) * (1.0 - target_fpr))
    if k > n:
        return float(x[-1]), 1.0 / (n + 1)
    return float(x[k - 1]), (n + 1 - k) / (n + 1)
