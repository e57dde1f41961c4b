"""Verdicts: a confidence interval judged against a threshold.

A check never compares a point estimate with its threshold. It passes when the whole interval
clears the threshold, fails when the whole interval is on the wrong side, and is *inconclusive*
when the interval straddles it; under ``strict`` an inconclusive check counts as a failure.

Example:
    >>> decide(Estimate(0.97, 0.93, 0.99), Threshold(0.90, "at_least")).verdict
    <Verdict.PASS: 'pass'>
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Literal

Direction = Literal["at_least", "at_most"]
DIRECTIONS: tuple[str, ...] = ("at_least", "at_most")
_SYMBOL = {"at_least": "≥", "at_most": "≤"}


class Verdict(str, Enum):
    """The outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Estimate:
    """A measured figure with its confidence interval.

    Attributes:
        value: The point estimate.
        lo: Lower end of the interval (``lo <= value`` unless the value is NaN).
        hi: Upper end of the interval.
        level: Two-sided confidence level of ``[lo, hi]`` (0.95 = a 95% interval).
        method: How the interval was obtained, for example ``"wilson"`` or ``"bootstrap(1000)"``.
        n: Sample size behind the figure (prompts), when there is one.
    """

    value: float
    lo: float
    hi: float
    level: float = 0.95
    method: str = ""
    n: int | None = None

    def __post_init__(self) -> None:
        if not math.isnan(self.value) and not (self.lo <= self.hi):
            raise ValueError(f"interval [{self.lo}, {self.hi}] is reversed")

    @property
    def finite(self) -> bool:
        """Whether value and both bounds are finite numbers."""
        return all(math.isfinite(x) for x in (self.value, self.lo, self.hi))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (NaN becomes ``None``)."""
        d = asdict(self)
        for k in ("value", "lo", "hi"):
            d[k] = d[k] if math.isfinite(d[k]) else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimate:
        """Inverse of :meth:`to_dict`."""
        nan = float("nan")
        return cls(
            value=nan if data["value"] is None else float(data["value"]),
            lo=nan if data["lo"] is None else float(data["lo"]),
            hi=nan if data["hi"] is None else float(data["hi"]),
            level=float(data.get("level", 0.95)),
            method=str(data.get("method", "")),
            n=data.get("n"),
        )

    @classmethod
    def of(cls, measured: Any) -> Estimate:
        """An :class:`Estimate` from anything shaped like an interval.

        Accepts an ``Estimate``, or an object with ``value``, ``low`` and ``high`` (the engine's
        :class:`~refusal_probe.stats.intervals.Interval` and :class:`~refusal_probe.stats.intervals.Rate`), taking
        ``level``, ``method`` and ``n`` when it has them.

        Raises:
            TypeError: ``measured`` has no interval.
        """
        if isinstance(measured, Estimate):
            return measured
        if all(hasattr(measured, k) for k in ("value", "low", "high")):
            n = getattr(measured, "n", None)
            method = str(getattr(measured, "method", ""))
            resamples = getattr(measured, "n_resamples", 0)
            if resamples and "bootstrap" in method:
                method = f"{method} ({resamples} resamples)"
            return cls(
                float(measured.value),
                float(measured.low),
                float(measured.high),
                float(getattr(measured, "level", 0.95)),
                method,
                None if n is None else int(n),
            )
        raise TypeError(
            f"cannot judge {type(measured).__name__}: pass an Estimate or an object with value, "
            "low and high"
        )

    @classmethod
    def exact(cls, value: float, method: str = "exact", n: int | None = None) -> Estimate:
        """A figure without sampling error (its interval is the point)."""
        return cls(value, value, value, 1.0, method, n)


@dataclass(frozen=True)
class Threshold:
    """A bar a figure must clear.

    Attributes:
        value: The bar.
        direction: ``"at_least"`` (the figure must be ≥ value) or ``"at_most"`` (≤ value).
    """

    value: float
    direction: Direction

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"threshold direction {self.direction!r} is not one of {DIRECTIONS}")

    def __str__(self) -> str:
        return f"{_SYMBOL[self.direction]} {self.value:g}"


@dataclass(frozen=True)
class Decision:
    """A verdict and the sentence that explains it.

    Attributes:
        verdict: pass, fail or inconclusive (after ``strict`` is applied).
        message: What was measured against what, and by how much it cleared or missed.
        margin: Signed distance from the threshold to the interval's deciding bound (positive:
            cleared; negative: missed); NaN when the estimate is not a number.
        raw: The verdict before ``strict`` turned an inconclusive one into a failure.
    """

    verdict: Verdict
    message: str
    margin: float
    raw: Verdict


def decide(est: Estimate, thr: Threshold, *, strict: bool = False, name: str = "value") -> Decision:
    """Judge an interval against a threshold.

    ``at_least``: pass if ``lo >= t``, fail if ``hi < t``, else inconclusive.
    ``at_most``: pass if ``hi <= t``, fail if ``lo > t``, else inconclusive.
    A non-finite estimate is inconclusive (it was not measured), never a pass.

    Args:
        est: The figure and its interval.
        thr: The bar to clear.
        strict: Treat inconclusive as fail.
        name: What the figure is, for the message (``"harmful refusal rate"``).
    """
    shown = f"{name} {_fmt(est.value)} [{_fmt(est.lo)}, {_fmt(est.hi)}]"
    want = f"required {thr}"
    if not est.finite:
        raw, margin = Verdict.INCONCLUSIVE, float("nan")
        msg = f"{shown} is not a finite number; {want}"
    elif thr.direction == "at_least":
        raw, margin, msg = _at_least(est, thr.value, shown, want)
    else:
        raw, margin, msg = _at_most(est, thr.value, shown, want)
    verdict = Verdict.FAIL if strict and raw is Verdict.INCONCLUSIVE else raw
    if verdict is not raw:
        msg += " (inconclusive counts as failure under --strict)"
    return Decision(verdict, msg, margin, raw)


def _at_least(est: Estimate, t: float, shown: str, want: str) -> tuple[Verdict, float, str]:
    if est.lo >= t:
        return (
            Verdict.PASS,
            est.lo - t,
            f"{shown} clears the bar: lower bound ≥ {t:g} by {est.lo - t:.3g}",
        )
    if est.hi < t:
        return (
            Verdict.FAIL,
            est.hi - t,
            f"{shown} is below the bar, {want}: even the upper bound misses it by {t - est.hi:.3g}",
        )
    return (
        Verdict.INCONCLUSIVE,
        est.lo - t,
        f"{shown} straddles the bar ({want}); more prompts would narrow the interval",
    )


def _at_most(est: Estimate, t: float, shown: str, want: str) -> tuple[Verdict, float, str]:
    if est.hi <= t:
        return (
            Verdict.PASS,
            t - est.hi,
            f"{shown} clears the bar: upper bound ≤ {t:g} by {t - est.hi:.3g}",
        )
    if est.lo > t:
        return (
            Verdict.FAIL,
            t - est.lo,
            f"{shown} is above the bar, {want}: even the lower bound exceeds it by "
            f"{est.lo - t:.3g}",
        )
    return (
        Verdict.INCONCLUSIVE,
        t - est.hi,
        f"{shown} straddles the bar ({want}); more prompts would narrow the interval",
    )


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3f}"


def worst(verdicts: list[Verdict]) -> Verdict | None:
    """The most severe of several verdicts (fail > inconclusive > pass); ``None`` if empty."""
    order = (Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.PASS)
    for v in order:
        if v in verdicts:
            return v
    return None
