"""What CI systems read of a run: JUnit properties, pytest-html's Environment and extras.

A CI server shows the JUnit XML, not ``audit.json``; so the XML carries the run's identity as
suite properties and every field of every check as a property of its own (never one packed
string to parse back). The names:

* suite: ``refusal_probe.model``, ``.fingerprint``, ``.verdict``, ``.report``,
  ``.policy_sha256``, ``.config_sha256`` and, when required checks did not run,
  ``.unmet_required``; in a series each checkpoint's are ``refusal_probe.<label>.<name>``,
  beside the series' ``refusal_probe.verdict`` (the worst) and ``refusal_probe.trend``.
* test case: ``check:<id>:<field>`` for each field of :data:`CHECK_FIELDS`.

pytest-html's Environment table gets the same identity (:func:`environment`).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from refusal_probe.report.plots import render_figure
from refusal_probe.report.record import AuditRecord, Figure

#: JUnit property field → the key of the check's dict it reads.
CHECK_FIELDS = {
    "verdict": "verdict",
    "value": "value",
    "lower": "lo",
    "upper": "hi",
    "level": "level",
    "method": "method",
    "n": "n",
    "threshold": "threshold",
    "bound": "direction",
    "unit": "unit",
}
#: Overall verdicts from worst to best: a series' verdict is its worst checkpoint's.
_WORST_FIRST = ("fail", "incomplete", "not_run", "inconclusive", "pass")


@dataclass(frozen=True)
class RunOutcome:
    """One checkpoint's run as CI sees it.

    Attributes:
        label: The checkpoint's label (its name in a series).
        spec: The model spec.
        record: Its audit record (``None`` when no check ran).
        report: Its report folder, if one was written.
        unmet: Required checks that did not run, each ``"<id> (<why>)"``.
    """

    label: str
    spec: str
    record: AuditRecord | None
    report: Path | None = None
    unmet: tuple[str, ...] = ()

    def identity(self) -> dict[str, str]:
        """Model, fingerprint, verdict, report and the hashes, by property name."""
        r = self.record
        out = {"model": self.spec}
        if r is not None:
            out["fingerprint"] = str(r.model.get("fingerprint") or "")
            out["verdict"] = str(r.summary()["verdict"])
            out["policy_sha256"] = str(r.config["policy"]["sha256"])
            out["config_sha256"] = str(r.config["sha256"])
        if self.report is not None:
            out["report"] = str(self.report / "index.html")
        if self.unmet:
            out["unmet_required"] = "; ".join(self.unmet)
        return out

    @property
    def verdict(self) -> str:
        """The record's overall verdict (``not_run`` without a record)."""
        return str(self.record.summary()["verdict"]) if self.record else "not_run"


def worst(verdicts: Sequence[str]) -> str:
    """The worst of some overall verdicts (``not_run`` for none)."""
    rank = {v: i for i, v in enumerate(_WORST_FIRST)}
    return min(verdicts, key=lambda v: rank.get(v, 0), default="not_run")


def check_properties(check: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The JUnit properties of one check: ``check:<id>:<field>`` = value, one per field."""
    cid = check["id"]
    return [(f"check:{cid}:{name}", _text(check.get(key))) for name, key in CHECK_FIELDS.items()]


def suite_properties(
    outcomes: Sequence[RunOutcome], trend: Path | None = None
) -> list[tuple[str, str]]:
    """The JUnit suite properties of a run (one checkpoint, or a series with its trend page)."""
    if len(outcomes) == 1:
        return [(f"refusal_probe.{k}", v) for k, v in outcomes[0].identity().items()]
    out = [("refusal_probe.verdict", worst([o.verdict for o in outcomes]))]
    if trend is not None:
        out.append(("refusal_probe.trend", str(trend / "index.html")))
    for o in outcomes:
        out += [(f"refusal_probe.{o.label}.{k}", v) for k, v in o.identity().items()]
    return out


def environment(outcomes: Sequence[RunOutcome]) -> dict[str, str]:
    """Rows for pytest-html's Environment table: model, fingerprint, verdict, hashes, report."""
    names = {
        "model": "Model",
        "fingerprint": "Model fingerprint",
        "verdict": "Audit verdict",
        "policy_sha256": "Policy sha256",
        "config_sha256": "Configuration sha256",
        "report": "Audit report",
        "unmet_required": "Required checks not run",
    }
    rows: dict[str, str] = {}
    for o in outcomes:
        prefix = f"{o.label}: " if len(outcomes) > 1 else ""
        for key, value in o.identity().items():
            rows[f"{prefix}{names[key]}"] = value
    return rows


def html_extras(checks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pytest-html extras: a verdict line per check and its figures as base64 SVG images."""

    def extra(name: str, kind: str, mime: str | None, ext: str | None, content: str) -> dict:
        keys = ("name", "format_type", "mime_type", "extension", "content")
        return dict(zip(keys, (name, kind, mime, ext, content), strict=True))

    out: list[dict[str, Any]] = []
    for c in checks:
        line = (
            f'<div class="refusal-probe-check" data-check-id="{escape(c["id"])}">'
            f"<b>{escape(c['verdict'].upper())}</b> {escape(c['message'])}</div>"
        )
        out.append(extra(c["id"], "html", None, None, line))
        for f in c["figures"]:
            svg = render_figure(Figure.from_dict(f))
            if svg:
                svg64 = base64.b64encode(svg.encode()).decode()
                out.append(extra(f["title"], "image", "image/svg+xml", "svg", svg64))
            else:
                data = json.dumps(f["data"])
                out.append(extra(f["title"], "json", "application/json", "json", data))
    return out


def _text(x: Any) -> str:
    """A property value: numbers in full precision, nothing as an empty string."""
    if x is None:
        return ""
    if isinstance(x, float):
        return "nan" if math.isnan(x) else repr(x)
    return str(x)
