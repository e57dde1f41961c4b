"""Plain-data forms of the engine's intervals, and the bar chart of refusal rates.

Every result of an audit run round-trips through ``to_dict``/``from_dict`` (the disk cache);
these helpers read back the intervals they hold (JSON turns NaN into ``None``).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from refusal_probe.report.record import Figure
from refusal_probe.stats.intervals import Interval, Rate


def rate_dict(r: Rate) -> dict[str, Any]:
    """A Rate as plain data."""
    return asdict(r)


def rate_of(d: dict[str, Any]) -> Rate:
    """Inverse of :func:`rate_dict` (JSON turns NaN into ``None``)."""
    d = dict(d)
    d["value"] = math.nan if d.get("value") is None else d["value"]
    return Rate(**d)


def interval_of(d: dict[str, Any]) -> Interval:
    """An Interval from plain data."""
    d = dict(d)
    for k in ("value", "low", "high"):
        d[k] = math.nan if d.get(k) is None else d[k]
    return Interval(**d)


def rate_bars(
    labels: list[str],
    series: list[tuple[str, list[Rate | None]]],
    threshold: float | None,
    title: str,
    caption: str,
) -> Figure:
    """Bars of refusal rates with whiskers, one bar group per label and one colour per series."""

    def col(rs: list[Rate | None], attr: str) -> list[float | None]:
        return [getattr(r, attr) if r is not None else None for r in rs]

    return Figure(
        "bars",
        title,
        {
            "labels": labels,
            "y_label": "refusal rate",
            "y_range": [0, 1],
            "threshold": threshold,
            "series": [
                {"name": n, "values": col(rs, "value"), "lo": col(rs, "low"), "hi": col(rs, "high")}
                for n, rs in series
            ],
        },
        caption,
    )
