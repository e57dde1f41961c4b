"""Verdicts: a confidence interval judged against a threshold.

A check never compares a point estimate with its threshold. It passes when the whole interval
clears the threshold, fails when the whole interval is on the wrong side, and is *inconclusive*
when the interval straddles it; under ``strict`` an inconclusive check counts as a failure.

Example:
    >>> decide(Interval(0.97, 0.93, 0.99), Threshold(0.90, Bound.AT_LEAST)).verdict
    <Verdict.PASS: 'pass'>
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from refusal_probe.stats.intervals import Interval


class Verdict(str, Enum):
    """The outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


class Bound(str, Enum):
    """Which side of its bar a figure must lie on; the value is the policy file's key."""

    AT_LEAST = "at_least"
    AT_MOST = "at_most"

    def __str__(self) -> str:
        return self.value

    @property
    def key(self) -> str:
        """The key that states this bound in the policy file (``at_least = 0.9``)."""
        return self.value

    @property
    def symbol(self) -> str:
        """``≥`` or ``≤``."""
        return "≥" if self is Bound.AT_LEAST else "≤"

    def margin(self, x: float, bar: float) -> float:
        """Signed distance of ``x`` from ``bar``: positive on the side the figure must lie on."""
        return x - bar if self is Bound.AT_LEAST else bar - x

    def near(self, interval: Interval) -> float:
        """The bound of ``interval`` that must clear the bar (low for ≥, high for ≤)."""
        return interval.low if self is Bound.AT_LEAST else interval.high

    def far(self, interval: Interval) -> float:
        """The other bound: when even it is on the wrong side, the figure misses the bar."""
        return interval.high if self is Bound.AT_LEAST else interval.low

    def clears(self, interval: Interval, bar: float) -> bool:
        """Whether the whole interval lies on the good side of ``bar`` (touching it counts)."""
        x = self.near(interval)
        return x >= bar if self is Bound.AT_LEAST else x <= bar

    def misses(self, interval: Interval, bar: float) -> bool:
        """Whether the whole interval lies strictly on the wrong side of ``bar``."""
        x = self.far(interval)
        return x < bar if self is Bound.AT_LEAST else x > bar


@dataclass(frozen=True)
class Threshold:
    """A bar a figure must clear.

    Attributes:
        value: The bar.
        bound: :attr:`Bound.AT_LEAST` (the figure must be ≥ value) or :attr:`Bound.AT_MOST`
            (≤ value); its key (``"at_least"``) is accepted too.
    """

    value: float
    bound: Bound

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "bound", Bound(self.bound))
        except ValueError:
            keys = ", ".join(b.key for b in Bound)
            raise ValueError(f"threshold bound {self.bound!r} is not one of {keys}") from None

    def __str__(self) -> str:
        return f"{self.bound.symbol} {self.value:g}"


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


#: How a miss reads, per bound: where the interval lies, which bound, and what it does.
_MISS = {
    Bound.AT_LEAST: ("below", "upper", "misses it by"),
    Bound.AT_MOST: ("above", "lower", "exceeds it by"),
}


def decide(
    interval: Interval,
    thr: Threshold,
    *,
    strict: bool = False,
    name: str = "value",
    failed: str | None = None,
) -> Decision:
    """Judge an interval against a threshold.

    ``≥``: pass if ``low >= t``, fail if ``high < t``, else inconclusive.
    ``≤``: pass if ``high <= t``, fail if ``low > t``, else inconclusive.
    A non-finite estimate is inconclusive (it was not measured), never a pass. With ``failed``
    the check fails for that reason whatever the interval (say, there is no causal direction to
    measure): a verdict on the model, not a figure that went missing.

    Args:
        interval: The figure and its interval.
        thr: The bar to clear.
        strict: Treat inconclusive as fail.
        name: What the figure is, for the message (``"harmful refusal rate"``).
        failed: Why the check fails without a figure to judge.
    """
    b, t = thr.bound, thr.value
    if failed is not None:
        return Decision(Verdict.FAIL, f"{failed}; required {thr}", float("nan"), Verdict.FAIL)
    shown = f"{name} {_fmt(interval.value)} [{_fmt(interval.low)}, {_fmt(interval.high)}]"
    want = f"required {thr}"
    if not interval.finite:
        raw, margin = Verdict.INCONCLUSIVE, float("nan")
        msg = f"{shown} is not a finite number; {want}"
    elif b.clears(interval, t):
        raw, margin = Verdict.PASS, b.margin(b.near(interval), t)
        which = "lower" if b is Bound.AT_LEAST else "upper"
        msg = f"{shown} clears the bar: {which} bound {b.symbol} {t:g} by {margin:.3g}"
    elif b.misses(interval, t):
        raw, margin = Verdict.FAIL, b.margin(b.far(interval), t)
        side, which, verb = _MISS[b]
        msg = f"{shown} is {side} the bar, {want}: even the {which} bound {verb} {-margin:.3g}"
    else:
        raw, margin = Verdict.INCONCLUSIVE, b.margin(b.near(interval), t)
        msg = f"{shown} straddles the bar ({want}); more prompts would narrow the interval"
    verdict = Verdict.FAIL if strict and raw is Verdict.INCONCLUSIVE else raw
    if verdict is not raw:
        msg += " (inconclusive counts as failure under --strict-verdicts)"
    return Decision(verdict, msg, margin, raw)


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3f}"


def worst(verdicts: list[Verdict]) -> Verdict | None:
    """The most severe of several verdicts (fail > inconclusive > pass); ``None`` if empty."""
    order = (Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.PASS)
    for v in order:
        if v in verdicts:
            return v
    return None
