"""How well a scalar score separates two classes: AUROC, Cohen's d, accuracy, TPR at a fixed FPR.

Axes: ``n_pos``, ``n_neg`` samples of each class; ``B`` bootstrap resamples.

Intervals are stratified bootstraps (:class:`~refusal_probe.stats.intervals.Bootstrap`): each
class is resampled on its own, so the class sizes stay fixed. Statistics are computed exactly on
the resample counts (multiplicity weights), never recomputed per resample in Python.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike, NDArray

from refusal_probe.errors import MonitorError
from refusal_probe.stats.intervals import Bootstrap, Interval


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
    boot: Bootstrap = Bootstrap(),
) -> Separation:
    """AUROC, Cohen's d and best-threshold accuracy, each with a stratified bootstrap interval.

    One set of resamples serves all three statistics.

    Args:
        pos: Scores of the positive class (for refusal: harmful prompts' projections).
        neg: Scores of the negative class.
        boot: Resamples, seed and level.

    Raises:
        ValueError: A class is empty or a score is not finite.
    """
    p, n = _two(pos, neg)
    cp, cn = boot.stratified_counts(p.size, n.size)  # [B, n_pos], [B, n_neg]
    h = _pairwise(p, n)  # [n_pos, n_neg]
    auc_b = np.einsum("bi,ij,bj->b", cp, h, cn) / (p.size * n.size)
    d_b = _cohens_d_weighted(p, n, cp, cn)
    x, y, ends = _sorted_groups(p, n)
    order = np.argsort(np.concatenate([p, n]), kind="stable")
    acc_b, _ = _accuracy_weighted(
        y, ends, np.concatenate([cp, cn], axis=1)[:, order], p.size, n.size
    )
    acc, t = best_threshold_accuracy(p, n)
    method, size = boot.method("stratified"), int(p.size + n.size)
    return Separation(
        auroc=boot.interval(float(h.mean()), auc_b, method, n=size),
        cohens_d=boot.interval(cohens_d(p, n), d_b, method, n=size),
        accuracy=boot.interval(acc, acc_b, method, n=size),
        threshold=t,
        n_pos=p.size,
        n_neg=n.size,
    )


def tpr_at_fpr(
    pos: ArrayLike, neg: ArrayLike, fpr: float = 0.01, boot: Bootstrap = Bootstrap()
) -> Interval:
    """True-positive rate at the strictest threshold that keeps false positives at most ``fpr``.

    The threshold is the ``(m + 1)``-th largest negative score, ``m = floor(fpr * n_neg)`` (so at
    most ``m`` negatives score above it); a positive counts when it scores above the threshold.
    With 96 negatives and ``fpr = 0.01``, ``m = 0``: the positives must beat every negative.
    The interval is a stratified percentile bootstrap (each class resampled on its own).

    Raises:
        ValueError: A class is empty, a score is not finite, or ``fpr`` is outside [0, 1).
    """
    p, n = _two(pos, neg)
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    m = math.floor(fpr * n.size)

    def tpr(ps: NDArray[np.float64], ns: NDArray[np.float64]) -> NDArray[np.float64]:
        # ps: [B, n_pos], ns: [B, n_neg]
        t = -np.sort(-ns, axis=1)[:, m]  # the (m + 1)-th largest negative
        return (ps > t[:, None]).mean(1)

    cp, cn = boot.stratified_counts(p.size, n.size)
    stats = tpr(p[Bootstrap.indices(cp)], n[Bootstrap.indices(cn)])  # [B]
    value = float(tpr(p[None], n[None])[0])
    return boot.interval(value, stats, boot.method("stratified"), n=int(p.size + n.size))


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
