"""Anytime-valid confidence sequences for bounded means, and the stopping rule of a check.

Axes: ``t`` observations in the order they were drawn; ``m`` candidate means (the grid).

A fixed-n interval loses its coverage when one peeks after every round and stops as soon as it
looks decided. A *confidence sequence* keeps it: with probability at least ``level`` it covers
the true mean at every time at once, so a check may stop at any round it likes. The construction
is the hedged betting capital process of Waudby-Smith & Ramdas (2023, "Estimating means of
bounded random variables by betting", JRSS-B, Theorem 3 with the predictable plug-in bets of
their eq. 26): for each candidate mean ``m`` two gamblers bet that the mean is above, resp.
below, ``m``; their wealth is a nonnegative martingale when ``m`` is the true mean, so by Ville's
inequality it reaches ``1 / alpha`` with probability at most ``alpha``. The sequence at time
``t`` is the set of ``m`` whose hedged wealth has stayed below ``1 / alpha``, intersected over
time. Observations in ``[a, b]`` are rescaled to ``[0, 1]``: refusal rates are in ``[0, 1]``,
paired changes of a refusal (after − before) in ``[-1, 1]``.

The sequence is evaluated on a grid of candidate means and widened outward by one grid step, so
the reported interval always contains the exact one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from refusal_probe.stats.intervals import LEVEL, Interval
from refusal_probe.stats.verdicts import Threshold

#: Candidate means per unit of the rescaled support (the grid's resolution is 1 / GRID).
GRID = 1000
#: Largest fraction of the wealth a gambler stakes (the bets' truncation, ``c`` in the paper).
MAX_STAKE = 0.75
#: How the method reads in an interval.
METHOD = "betting confidence sequence (Waudby-Smith & Ramdas 2023, hedged, predictable plug-in)"


@dataclass(frozen=True)
class Path:
    """A confidence sequence evaluated after each observation.

    Attributes:
        low: ``[t]`` lower bound after ``t + 1`` observations (running intersection).
        high: ``[t]`` upper bound after ``t + 1`` observations.
        mean: ``[t]`` running sample mean.
    """

    low: NDArray[np.float64]
    high: NDArray[np.float64]
    mean: NDArray[np.float64]


def confidence_path(
    samples: ArrayLike, level: float = LEVEL, support: tuple[float, float] = (0.0, 1.0)
) -> Path:
    """The betting confidence sequence of a bounded mean after every observation.

    Args:
        samples: ``[t]`` the observations, in the order they were drawn (each in ``support``).
        level: Probability that the sequence covers the mean at all times at once.
        support: The interval ``[a, b]`` every observation lies in.

    Raises:
        ValueError: An observation is outside ``support``, or ``level`` is not in (0, 1).
    """
    a, b = support
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level!r} must be in (0, 1)")
    if b <= a:
        raise ValueError(f"support [{a}, {b}] is empty; pass (low, high) with low < high")
    if x.size and (x.min() < a or x.max() > b):
        raise ValueError(f"observations outside their support [{a:g}, {b:g}]")
    if x.size == 0:
        return Path(np.empty(0), np.empty(0), np.empty(0))
    y = (x - a) / (b - a)  # [t] in [0, 1]
    lo, hi = _unit_path(y, 1.0 - level)
    t = np.arange(1, y.size + 1)
    mean = np.cumsum(x) / t
    return Path(a + (b - a) * lo, a + (b - a) * hi, mean)


def _unit_path(y: NDArray[np.float64], alpha: float) -> tuple[NDArray, NDArray]:
    """Bounds ``[t]`` of the sequence for observations in ``[0, 1]`` at error ``alpha``."""
    n = y.size
    m = np.linspace(0.0, 1.0, GRID + 1)  # [m]
    t = np.arange(1, n + 1, dtype=np.float64)
    # predictable estimates: what was known before observation t (eq. 26's regularised ones)
    mu_now = (0.5 + np.cumsum(y)) / (t + 1)
    var = (0.25 + np.concatenate([[0.0], np.cumsum((y - mu_now) ** 2)[:-1]])) / t
    lam = np.sqrt(2.0 * math.log(2.0 / alpha) / (var * t * np.log1p(t)))  # [t]
    diff = y[:, None] - m[None, :]  # [t, m]
    bar = math.log(2.0 / alpha)  # hedged: half the wealth on each side, each must reach 2/alpha
    with np.errstate(divide="ignore"):
        # the bet on "mean > m" grows where m is too low; its wealth decreases in m, so the
        # means it excludes at time t are a prefix of the grid (and the other bet's a suffix)
        up = np.minimum(lam[:, None], MAX_STAKE / m[None, :])  # [t, m]
        below = (np.cumsum(np.log1p(up * diff), axis=0) >= bar).sum(axis=1)  # [t]
        down = np.minimum(lam[:, None], MAX_STAKE / (1.0 - m[None, :]))
        above = (np.cumsum(np.log1p(-down * diff), axis=0) >= bar).sum(axis=1)
    # intersect over time; widen by one grid step (the exact end lies between grid points)
    first = np.maximum.accumulate(below)  # [t] index of the first grid mean still inside
    last = GRID - np.maximum.accumulate(above)  # [t] index of the last one
    step = 1.0 / GRID
    lo = np.clip(m[np.minimum(first, GRID)] - step, 0.0, 1.0)
    hi = np.clip(m[np.maximum(last, 0)] + step, 0.0, 1.0)
    return _frozen_once_empty(lo, hi)


def _frozen_once_empty(lo: NDArray, hi: NDArray) -> tuple[NDArray, NDArray]:
    """Keep the bounds nested when the set empties (a miss, of probability at most ``alpha``).

    From the first empty time on, the sequence is the one point where it closed: the middle of
    the crossed bounds, held inside the last nonempty interval.
    """
    empty = lo > hi
    if not empty.any():
        return lo, hi
    t0 = int(empty.argmax())
    mid = (lo[t0] + hi[t0]) / 2
    if t0 > 0:
        mid = min(max(mid, lo[t0 - 1]), hi[t0 - 1])
    lo, hi = lo.copy(), hi.copy()
    lo[t0:], hi[t0:] = mid, mid
    return lo, hi


def sequence_interval(
    samples: ArrayLike,
    level: float = LEVEL,
    support: tuple[float, float] = (0.0, 1.0),
    *,
    rate: bool = False,
) -> Interval:
    """The confidence sequence after the last of ``samples``, as an :class:`Interval`.

    Args:
        samples: The observations so far, in the order drawn.
        level: The sequence's time-uniform coverage.
        support: The interval every observation lies in.
        rate: The observations are 0/1 outcomes: the interval records ``k`` successes.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return Interval.nothing(level, METHOD)
    p = confidence_path(x, level, support)
    value = float(p.mean[-1])
    low, high = min(float(p.low[-1]), value), max(float(p.high[-1]), value)
    k = int(round(x.sum())) if rate else None
    return Interval(value, low, high, level, METHOD, int(x.size), k)


def stopping_reason(interval: Interval, threshold: Threshold) -> str | None:
    """``"cleared"`` or ``"missed"`` when the interval decides ``threshold``, else ``None``."""
    if not interval.finite:
        return None
    if threshold.bound.clears(interval, threshold.value):
        return "cleared"
    if threshold.bound.misses(interval, threshold.value):
        return "missed"
    return None


#: Why a check stopped drawing prompts. ``cleared`` / ``missed``: its confidence sequence decided
#: the bar; ``exhausted``: the prompts ran out undecided (the fixed-n interval judges it);
#: ``budget``: the run's time budget ran out first; ``fixed``: sequential verdicts are off;
#: ``shared``: it read results computed for every prompt anyway (nothing to save).
REASONS = ("cleared", "missed", "exhausted", "budget", "fixed", "shared")


@dataclass(frozen=True)
class Stopping:
    """How a sequential check stopped.

    Attributes:
        rounds: Rounds of prompts it read.
        used: Prompts (or pairs) it read.
        available: Prompts it could have read.
        reason: One of :data:`REASONS`.
    """

    rounds: int
    used: int
    available: int
    reason: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"stopping reason {self.reason!r} is not one of {', '.join(REASONS)}")

    @property
    def saved(self) -> int:
        """Prompts it did not need."""
        return self.available - self.used

    def to_dict(self) -> dict[str, int | str]:
        """Plain data (``saved`` included)."""
        return {
            "rounds": self.rounds,
            "used": self.used,
            "available": self.available,
            "saved": self.saved,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, int | str]) -> Stopping:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["rounds"]), int(d["used"]), int(d["available"]), str(d["reason"]))


class SequentialCheck:
    """One check's confidence sequence, fed a round of observations at a time.

    Args:
        threshold: The check's bar.
        available: Observations it may read in all.
        level: The sequence's time-uniform coverage.
        support: The interval every observation lies in.
        rate: Observations are 0/1 outcomes (the interval records ``k``).
    """

    def __init__(
        self,
        threshold: Threshold,
        available: int,
        level: float = LEVEL,
        support: tuple[float, float] = (0.0, 1.0),
        *,
        rate: bool = False,
    ) -> None:
        self.threshold = threshold
        self.available = available
        self.level = level
        self.support = support
        self.rate = rate
        self.samples: list[float] = []
        self.rounds = 0
        self.reason: str | None = None

    def __repr__(self) -> str:
        return (
            f"SequentialCheck({self.threshold}, {len(self.samples)}/{self.available}, "
            f"{self.reason or 'open'})"
        )

    @property
    def open(self) -> bool:
        """Whether it still wants observations."""
        return self.reason is None and len(self.samples) < self.available

    def add(self, observations: ArrayLike) -> str | None:
        """Read one round; returns the stopping reason once the sequence decides the bar."""
        self.samples.extend(float(v) for v in np.asarray(observations, dtype=np.float64).ravel())
        self.rounds += 1
        if self.reason is None and len(self.samples) < self.available:
            self.reason = stopping_reason(self.interval(), self.threshold)
        return self.reason

    def interval(self) -> Interval:
        """The confidence sequence after the observations read so far."""
        return sequence_interval(self.samples, self.level, self.support, rate=self.rate)

    def stop(self, reason: str) -> None:
        """Stop it undecided (``"budget"``) unless it has decided already."""
        if self.reason is None:
            self.reason = reason

    def stopping(self) -> Stopping:
        """How it stopped: decided, out of prompts (``exhausted``) or out of time."""
        reason = self.reason or "exhausted"
        return Stopping(self.rounds, len(self.samples), self.available, reason)


def rounds_of(n: int, size: int) -> list[range]:
    """Consecutive index ranges of ``size`` covering ``range(n)`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"round size {size} must be at least 1")
    return [range(s, min(s + size, n)) for s in range(0, n, size)]
