"""Figures shared by several results of an audit run: the bar chart of refusal rates."""

from __future__ import annotations

from refusal_probe.report.record import Figure
from refusal_probe.stats.intervals import Interval


def rate_bars(
    labels: list[str],
    series: list[tuple[str, list[Interval | None]]],
    threshold: float | None,
    title: str,
    caption: str,
) -> Figure:
    """Bars of refusal rates with whiskers, one bar group per label and one colour per series."""

    def col(rs: list[Interval | None], attr: str) -> list[float | None]:
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
