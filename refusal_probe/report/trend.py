"""The trend of a series of checkpoints: every check plotted against the checkpoints.

A fine-tune leaves a series of checkpoints. Auditing them in one run (``pytest audits/ --model A
--model B ...``), or running ``python -m refusal_probe trend A/audit.json B/audit.json ...`` on
earlier runs, writes ``<report_dir>/trend/<run-id>/`` with ``index.html`` (self-contained: inline
CSS and SVG) and ``trend.json``: a verdict table checkpoint × check, and for each check its value
and interval at each checkpoint, in the order given, with the policy's bar. The folder is written
under a temporary name and renamed when complete, and ``<report_dir>/trend/latest`` points at it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from refusal_probe.errors import ReportError
from refusal_probe.report.provenance import new_run_id, utc
from refusal_probe.report.record import (
    AuditRecord,
    Figure,
    _clean,
    ordered_audits,
    policy_audits,
)
from refusal_probe.report.render import environment, model_slugs, point_latest, write_folder
from refusal_probe.report.schema import read_record
from refusal_probe.report.series import expand_runs
from refusal_probe.stats.verdicts import Bound

TREND_SCHEMA_ID = "refusal-probe/trend"
#: Version of the trend.json layout; bump the minor for additions, the major for changes.
TREND_SCHEMA_VERSION = "1.0"
#: Units whose values lie in [0, 1], plotted on that range.
_UNIT_RANGE = {"probability": (0.0, 1.0), "cosine": (-1.0, 1.0), "difference": (-1.0, 1.0)}


@dataclass(frozen=True)
class SeriesItem:
    """One checkpoint of a series, as handed to :func:`build_trend`.

    Attributes:
        label: Its short, distinct name (the plots' x axis).
        spec: The model spec.
        record: Its audit record, or ``None`` when it has none (no check ran, or it failed).
        folder: Its report folder, for the link (``None``: no link).
        reason: Why it has no record.
    """

    label: str
    spec: str
    record: AuditRecord | None
    folder: Path | None = None
    reason: str = ""


@dataclass(frozen=True)
class TrendPoint:
    """One check at one checkpoint.

    Attributes:
        value: The point estimate (``None`` when not a number or not run).
        lo: Lower end of the interval.
        hi: Upper end of the interval.
        verdict: ``pass``, ``fail``, ``inconclusive``, or ``not_run``.
    """

    value: float | None
    lo: float | None
    hi: float | None
    verdict: str


@dataclass(frozen=True)
class TrendCheck:
    """One check across the series.

    Attributes:
        id: ``<audit>.<name>``.
        title: What is checked, in words.
        audit: The audit it belongs to.
        unit: The policy unit of the figure.
        direction: Which side of the bar the figure must lie on.
        threshold: The bar, or ``None`` when the checkpoints were judged against different bars.
        points: One point per checkpoint, in series order.
    """

    id: str
    title: str
    audit: str
    unit: str
    direction: Bound
    threshold: float | None
    points: tuple[TrendPoint, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Bound(self.direction))

    def figure(self, labels: Sequence[str]) -> Figure:
        """The check's value and interval against the checkpoints, with the bar."""
        pts = self.points
        data: dict[str, Any] = {
            "x": list(range(len(pts))),
            "x_labels": list(labels),
            "x_label": "checkpoint",
            "y_label": self.unit,
            "series": [
                {
                    "name": self.id,
                    "y": [p.value for p in pts],
                    "lo": [p.lo for p in pts],
                    "hi": [p.hi for p in pts],
                }
            ],
            "threshold": self.threshold,
        }
        if self.unit in _UNIT_RANGE:
            data["y_range"] = list(_UNIT_RANGE[self.unit])
        caption = "Band: the confidence interval at each checkpoint"
        if self.threshold is not None:
            caption += f"; dashed line: the bar ({self.direction.symbol} {self.threshold:g})"
        return Figure("line", self.title, data, caption)


@dataclass(frozen=True)
class TrendCheckpoint:
    """One checkpoint's line in the trend.

    Attributes:
        label: Its short name.
        spec: The model spec.
        status: ``complete``, ``interrupted``, or ``missing`` (no record).
        verdict: The record's overall verdict, or ``not_run``.
        run_id: The audit run the figures come from.
        fingerprint: The model's fingerprint.
        report: Its report folder, where known.
        reason: Why it has no record.
    """

    label: str
    spec: str
    status: str
    verdict: str
    run_id: str | None
    fingerprint: str | None
    report: str | None
    reason: str = ""


@dataclass(frozen=True)
class Trend:
    """A series of checkpoints and every check across it.

    Attributes:
        id: The trend's run id (its folder name).
        created_utc: When it was built.
        checkpoints: The checkpoints, in series order.
        checks: Every check that ran at any checkpoint, in the policies' audit order.
        notes: What makes the checkpoints hard to compare (different policies, prompt sets...).
    """

    id: str
    created_utc: str
    checkpoints: tuple[TrendCheckpoint, ...]
    checks: tuple[TrendCheck, ...]
    notes: tuple[str, ...]

    @property
    def labels(self) -> list[str]:
        """The checkpoints' labels, in order."""
        return [c.label for c in self.checkpoints]

    def by_audit(self) -> list[tuple[str, list[TrendCheck]]]:
        """Checks grouped by audit, in the policies' order."""
        names = ordered_audits([], [c.audit for c in self.checks])  # checks are in order already
        return [(a, [c for c in self.checks if c.audit == a]) for a in names]

    def to_dict(self) -> dict[str, Any]:
        """The trend.json content."""
        return _clean(
            {
                "schema": TREND_SCHEMA_ID,
                "schema_version": TREND_SCHEMA_VERSION,
                "id": self.id,
                "created_utc": self.created_utc,
                "checkpoints": [asdict(c) for c in self.checkpoints],
                "checks": [
                    {
                        **asdict(c),
                        "direction": c.direction.key,
                        "points": [asdict(p) for p in c.points],
                    }
                    for c in self.checks
                ],
                "notes": list(self.notes),
            }
        )


def build_trend(items: Sequence[SeriesItem], run_id: str | None = None) -> Trend:
    """Line up the checks of a series of checkpoints.

    Args:
        items: The checkpoints in series order, each with its record (or ``None``).
        run_id: The trend's id (default a new run id).

    Raises:
        ReportError: The series is empty, or two checkpoints share a label.
    """
    if not items:
        raise ReportError("a trend needs at least one checkpoint; pass audit.json files")
    labels = [i.label for i in items]
    if len(set(labels)) != len(labels):
        raise ReportError(f"checkpoint labels must be distinct, got {labels}")
    records = [i.record for i in items]
    ids: list[str] = []
    for r in records:
        ids += [c.id for c in (r.checks if r else ()) if c.id not in ids]
    checks = []
    for cid in ids:
        found = [r.check(cid) if r else None for r in records]
        first = next(c for c in found if c is not None)
        bars = {(c.threshold, c.direction) for c in found if c is not None}
        points = tuple(
            TrendPoint(c.value, c.lo, c.hi, c.verdict)
            if c is not None
            else TrendPoint(None, None, None, "not_run")
            for c in found
        )
        checks.append(
            TrendCheck(
                cid,
                first.title,
                first.audit,
                first.unit,
                first.direction,
                first.threshold if len(bars) == 1 else None,
                points,
            )
        )
    policies = [policy_audits(r.config) for r in records if r is not None]
    order = {a: i for i, a in enumerate(ordered_audits([], [a for p in policies for a in p]))}
    checks.sort(key=lambda c: order.get(c.audit, len(order)))  # stable: run order within an audit
    return Trend(
        id=run_id or new_run_id(),
        created_utc=utc(time.time()),
        checkpoints=tuple(_checkpoint(i) for i in items),
        checks=tuple(checks),
        notes=tuple(_notes(items, checks)),
    )


def _checkpoint(item: SeriesItem) -> TrendCheckpoint:
    r = item.record
    return TrendCheckpoint(
        label=item.label,
        spec=item.spec,
        status=r.status if r else "missing",
        verdict=r.summary()["verdict"] if r else "not_run",
        run_id=str(r.run.get("id")) if r else None,
        fingerprint=r.model.get("fingerprint") if r else None,
        report=str(item.folder) if item.folder else None,
        reason=item.reason,
    )


def _notes(items: Sequence[SeriesItem], checks: list[TrendCheck]) -> list[str]:
    present = [i.record for i in items if i.record is not None]
    notes = []
    for name, values in (
        ("policy files", {r.config["policy"]["sha256"] for r in present}),
        ("prompt sets", {json.dumps(r.data.get("sha256"), sort_keys=True) for r in present}),
    ):
        if len(values) > 1:
            notes.append(
                f"The checkpoints were audited with different {name}; a change along the series "
                "may come from that rather than from the checkpoints."
            )
    if len({r.model.get("architecture") for r in present}) > 1:
        notes.append("The checkpoints have different architectures; directions are not comparable.")
    varied = [c.id for c in checks if c.threshold is None]
    if varied:
        notes.append(f"Different bars along the series for {', '.join(varied)}; none is drawn.")
    for i in items:
        if i.record is None:
            notes.append(f"{i.label} has no audit record: {i.reason or 'no check ran'}.")
        elif i.record.status != "complete":
            notes.append(f"The run of {i.label} is incomplete ({i.record.status}).")
    return notes


def render_trend(trend: Trend, links: dict[str, str] | None = None) -> str:
    """The HTML page of a trend; ``links`` maps labels to their reports (relative URLs)."""
    figures = {c.id: c.figure(trend.labels) for c in trend.checks}
    return (
        environment()
        .get_template("trend.html")
        .render(t=trend, figures=figures, links=links or {}, schema_version=TREND_SCHEMA_VERSION)
    )


def write_trend(trend: Trend, report_dir: str | Path) -> Path:
    """Write ``<report_dir>/trend/<id>/`` (index.html, trend.json) atomically; return the folder.

    ``<report_dir>/trend/latest`` then points at it.

    Raises:
        ReportError: The folder exists already, or cannot be written.
    """
    parent = Path(report_dir) / "trend"
    final = parent / trend.id
    links = {
        c.label: Path(os.path.relpath(Path(c.report) / "index.html", final)).as_posix()
        for c in trend.checkpoints
        if c.report
    }
    texts = {
        "trend.json": json.dumps(trend.to_dict(), indent=2) + "\n",
        "index.html": render_trend(trend, links),
    }
    write_folder(parent, trend.id, texts)
    try:
        point_latest(parent, trend.id)
    except OSError as exc:
        raise ReportError(f"cannot point {parent / 'latest'} at the trend: {exc}") from exc
    return final


def trend_files(paths: Sequence[str | Path], report_dir: str | Path) -> Path:
    """Build and write the trend of earlier runs' audit.json files (or run folders), in order.

    A reports folder among ``paths`` stands for the run of each checkpoint audited into it
    (:func:`refusal_probe.report.series.runs_in`: a series audited by separate jobs).

    Raises:
        ReportError: A file is missing, corrupted or of an unreadable schema version.
    """
    paths = expand_runs(paths)
    records = [read_record(p) for p in paths]
    folders = [Path(p) if Path(p).is_dir() else Path(p).parent for p in paths]
    labels = model_slugs([str(r.model.get("spec", "model")) for r in records])
    items = [
        SeriesItem(label, str(r.model.get("spec", "")), r, folder.resolve())
        for label, r, folder in zip(labels, records, folders, strict=True)
    ]
    return write_trend(build_trend(items), report_dir)
