"""One check's entry as a test records it: the verdict, its interval, the bar and the evidence.

The pytest plugin's ``audit`` fixture judges a figure and keeps this entry on the test item until
the report is written (:class:`~refusal_probe.report.record.CheckRecord` is its stored form).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refusal_probe.audit.policy import CheckPolicy
from refusal_probe.report.record import Figure
from refusal_probe.stats.intervals import Interval
from refusal_probe.stats.sequential import Stopping
from refusal_probe.stats.verdicts import Decision


def check_entry(
    check_id: str,
    cp: CheckPolicy,
    title: str,
    decision: Decision,
    measured: Interval,
    *,
    nodeid: str,
    figures: Sequence[Figure] = (),
    details: dict[str, Any] | None = None,
    sequential: Stopping | None = None,
) -> dict[str, Any]:
    """The recorded form of one judged check (``sequential``: how it stopped drawing prompts)."""
    entry = {
        "id": check_id,
        "audit": cp.audit,
        "title": title,
        "verdict": decision.verdict.value,
        "raw_verdict": decision.raw.value,
        "message": decision.message,
        "value": measured.value,
        "lo": measured.low,
        "hi": measured.high,
        "level": measured.level,
        "method": measured.method,
        "n": measured.n,
        "threshold": cp.threshold.value,
        "direction": cp.threshold.bound.key,
        "unit": cp.unit,
        "rationale": cp.rationale,
        "nodeid": nodeid,
        "figures": [f.to_dict() for f in figures],
        "details": details or {},
    }
    if sequential is not None:
        entry["sequential"] = sequential.to_dict()
    return entry
