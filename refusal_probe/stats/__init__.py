"""Statistics: intervals (Wilson, bootstrap), separation measures, and verdicts against a bar."""

from refusal_probe.stats.intervals import (
    Interval,
    Rate,
    Separation,
    separation,
    wilson_interval,
)
from refusal_probe.stats.verdicts import (
    Decision,
    Estimate,
    Threshold,
    Verdict,
    decide,
)

__all__ = [
    "Decision",
    "Estimate",
    "Interval",
    "Rate",
    "Separation",
    "Threshold",
    "Verdict",
    "decide",
    "separation",
    "wilson_interval",
]
