"""The audit record: what one run of the audit suite found, as plain dataclasses.

The record is the single source of both outputs: ``audit.json`` is :meth:`AuditRecord.to_dict`
(validated against ``audit.schema.json``), and ``index.html`` is one Jinja render of the same
data. Figures are stored as data (numbers and labels), and drawn as SVG only when rendered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from refusal_probe.stats.verdicts import Bound

#: Version of the audit.json layout; bump the minor for additions, the major for changes.
SCHEMA_VERSION = "1.4"  # 1.1: config.policy names its audits in order; 1.2: status errored;
# 1.3: not_run kind not_applicable, run.required; 1.4: check.sequential, phases' passes/tokens
SCHEMA_ID = "refusal-probe/audit"
#: The audits of the shipped policy before records named their policy's audits (schema 1.0): how
#: an old record's checks are ordered. A run's audits and their order now come from its policy.
AUDITS_BEFORE_1_1: tuple[str, ...] = (
    "behaviour",
    "representation",
    "causal",
    "finetune",
    "localization",
    "monitor",
)
_VERDICTS = ("pass", "fail", "inconclusive")


@dataclass(frozen=True)
class Figure:
    """Evidence for a check, as data to be drawn.

    Attributes:
        kind: ``line`` (series over x, optional bands), ``heatmap`` (a grid), ``bars`` (values
            with intervals) or ``table`` (rows of cells).
        title: One line saying what the figure shows.
        data: Kind-specific content (see :mod:`refusal_probe.report.plots`); numbers, labels and
            ``None`` for missing cells only.
        caption: How to read it (what a good model looks like).
    """

    kind: str
    title: str
    data: dict[str, Any]
    caption: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite numbers become ``None``)."""
        return {
            "kind": self.kind,
            "title": self.title,
            "caption": self.caption,
            "data": _clean(self.data),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figure:
        """Inverse of :meth:`to_dict`."""
        return cls(d["kind"], d["title"], d.get("data", {}), d.get("caption", ""))


def rank_curves(
    title: str,
    components: Sequence[str],
    lines: Sequence[tuple[str, Sequence[Any]]],
    y_label: str,
    caption: str,
    threshold: float | None = None,
) -> Figure:
    """A line figure over component ranks ``1..k``: one series per ``(name, values)``.

    Values are floats, or intervals (anything with ``value``, ``low``, ``high``), which are drawn
    with whiskers; the y range runs from the lowest whisker (or 0) to 1.05.
    """
    series, lows = [], [0.0]
    for name, values in lines:
        line: dict[str, Any] = {"name": name, "y": [getattr(v, "value", v) for v in values]}
        if values and hasattr(values[0], "low"):
            line["lo"], line["hi"] = [v.low for v in values], [v.high for v in values]
            lows += line["lo"]
        series.append(line)
    return Figure(
        "line",
        title,
        {
            "x": list(range(1, len(components) + 1)),
            "series": series,
            "x_label": "component rank i (" + ", ".join(components) + ")",
            "y_label": y_label,
            "y_range": [min(lows), 1.05],
            "threshold": threshold,
        },
        caption,
    )


@dataclass(frozen=True)
class CheckRecord:
    """One check's result.

    Attributes:
        id: ``<audit>.<name>``, stable across runs (comparisons key on it).
        audit: The audit it belongs to.
        title: What is checked, in words.
        verdict: ``pass``, ``fail`` or ``inconclusive`` (after ``--strict``).
        message: The sentence explaining the verdict, with the margin.
        value: The point estimate (``None`` when not a number).
        lo: Lower end of the interval.
        hi: Upper end of the interval.
        level: Confidence level of the interval.
        method: How the value and interval were computed.
        n: Sample size.
        threshold: The bar from the policy.
        direction: Which side of the bar the figure must lie on (``at_least`` or ``at_most`` in
            audit.json).
        unit: The policy unit of the figure.
        rationale: The policy's one-line reason for the bar.
        nodeid: The pytest node that ran it.
        raw_verdict: The verdict before ``--strict`` was applied.
        duration_s: Wall time of the test, in seconds.
        figures: The evidence.
        details: Further numbers that back the check (JSON data).
        sequential: How a sequential check stopped drawing prompts (``Stopping.to_dict``).
    """

    id: str
    audit: str
    title: str
    verdict: str
    message: str
    value: float | None
    lo: float | None
    hi: float | None
    level: float
    method: str
    n: int | None
    threshold: float
    direction: Bound
    unit: str
    rationale: str
    nodeid: str = ""
    raw_verdict: str = ""
    duration_s: float = 0.0
    figures: tuple[Figure, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    sequential: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Bound(self.direction))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["direction"] = self.direction.key
        d["figures"] = [f.to_dict() for f in self.figures]
        d["details"] = _clean(self.details)
        for k in ("value", "lo", "hi"):
            d[k] = _num(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckRecord:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["figures"] = tuple(Figure.from_dict(f) for f in d.get("figures", ()))
        return cls(**d)


@dataclass(frozen=True)
class NotRun:
    """A check or audit that did not run, and why.

    Attributes:
        id: Check id (``<audit>.<test name>``) or audit name.
        audit: The audit it belongs to.
        reason: Why it did not run, in words.
        kind: ``skipped`` (by the test or the policy), ``deselected`` (``-k``/``-m``), ``absent``
            (no such audit file in the suite), ``not_reached`` (the run stopped first), or
            ``error`` (the test raised before reaching its verdict), or ``not_applicable`` (the
            check cannot apply to this run: a fine-tune check without ``--baseline``).
        nodeid: The pytest node, if there was one.
    """

    id: str
    audit: str
    reason: str
    kind: str = "skipped"
    nodeid: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Delta:
    """A figure of the candidate beside the baseline's.

    Attributes:
        id: The figure's id (a check id where there is one).
        title: What the figure is.
        candidate: Its value on the audited model.
        baseline: Its value on the baseline.
        delta: ``candidate - baseline``.
    """

    id: str
    title: str
    candidate: float | None
    baseline: float | None
    delta: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: _num(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


#: What the numbers of every run do not show, whatever the model.
LIMITATIONS: tuple[str, ...] = (
    "Refusal is judged on short greedy completions by the judge the settings name: the reply "
    "judge reads each completion with fixed rules (a refusal that then complies, or a "
    "disclaimer that answers, is compliance; garbled text is not a refusal), the substring judge "
    "counts a refusal phrase anywhere and overstates refusal. Neither reads past the generation "
    "bound, and neither says how harmful an answer that complies is.",
    "The refusal direction is a single difference-of-means direction; refusal can be mediated by "
    "several directions (a cone), which a single direction under-describes.",
    "A refusal direction measures refusal, not harmfulness: a model can represent a request as "
    "harmful and still not refuse it.",
    "Figures hold for the prompt sets audited (English, the counts listed under Data); intervals "
    "cover sampling of prompts from that distribution, not other distributions.",
)


def status_of(interrupted: bool, not_run: Sequence[NotRun]) -> str:
    """A record's status: ``interrupted``, else ``errored`` if a test errored, else ``complete``.

    Only a ``complete`` record becomes ``latest``: a run whose tests errored (say, a file they
    read vanished) may lack checks or artifacts a complete run has.
    """
    if interrupted:
        return "interrupted"
    return "errored" if any(n.kind == "error" for n in not_run) else "complete"


@dataclass(frozen=True)
class AuditRecord:
    """Everything one audit run leaves behind.

    Attributes:
        status: ``complete``; ``interrupted`` when the run stopped early; ``errored`` when a
            test raised an error (listed under ``not_run``, kind ``error``). Only a complete
            record is pointed to by ``latest`` (see :func:`status_of`).
        run: Run id, UTC times, user, host, command, versions, git commit, hardware, seed.
        model: The audited model's identity (spec, weight SHA-256, architecture, sizes, template).
        baseline: The baseline's identity and kind (``model`` or ``audit``), or ``None``.
        config: The resolved options, the policy with every threshold, and their hash.
        data: Prompt-set fingerprints and counts per split.
        checks: The checks that ran, in run order.
        not_run: Checks and audits that did not run, with the reason.
        deltas: Figures against the baseline.
        limitations: What the numbers do not show.
        artifacts: Files saved beside audit.json, by name (for example the selected direction,
            which a later run's ``--baseline`` reads).
        schema_version: Version of this layout.
    """

    status: str
    run: dict[str, Any]
    model: dict[str, Any]
    baseline: dict[str, Any] | None
    config: dict[str, Any]
    data: dict[str, Any]
    checks: tuple[CheckRecord, ...] = ()
    not_run: tuple[NotRun, ...] = ()
    deltas: tuple[Delta, ...] = ()
    limitations: tuple[str, ...] = ()
    artifacts: dict[str, str] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def summary(self) -> dict[str, Any]:
        """Counts per verdict and the overall verdict (worst of the checks that ran).

        A run that stopped early has no overall pass: unless a check failed, its verdict is
        ``incomplete``.
        """
        counts = {v: sum(1 for c in self.checks if c.verdict == v) for v in _VERDICTS}
        counts["not_run"] = len(self.not_run)
        counts["errors"] = sum(1 for n in self.not_run if n.kind == "error")
        if counts["fail"] or counts["errors"]:
            overall = "fail"
        elif self.status != "complete":
            overall = "incomplete"
        elif counts["inconclusive"]:
            overall = "inconclusive"
        elif counts["pass"]:
            overall = "pass"
        else:
            overall = "not_run"
        return {**counts, "verdict": overall}

    def audit_order(self) -> list[str]:
        """The audits of the run's policy, in its order (``config.policy.audits``)."""
        return policy_audits(self.config)

    def by_audit(self) -> list[tuple[str, list[CheckRecord]]]:
        """Checks grouped by audit, in the policy's order, then any other audits as they ran."""
        names = ordered_audits(self.audit_order(), [c.audit for c in self.checks])
        return [(a, [c for c in self.checks if c.audit == a]) for a in names]

    def check(self, check_id: str) -> CheckRecord | None:
        """The check with ``check_id``, if it ran."""
        return next((c for c in self.checks if c.id == check_id), None)

    def to_dict(self) -> dict[str, Any]:
        """The audit.json content."""
        return {
            "schema": SCHEMA_ID,
            "schema_version": self.schema_version,
            "status": self.status,
            "summary": self.summary(),
            "run": _clean(self.run),
            "model": _clean(self.model),
            "baseline": _clean(self.baseline),
            "config": _clean(self.config),
            "data": _clean(self.data),
            "checks": [c.to_dict() for c in self.checks],
            "not_run": [n.to_dict() for n in self.not_run],
            "deltas": [d.to_dict() for d in self.deltas],
            "limitations": list(self.limitations),
            "artifacts": dict(self.artifacts),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditRecord:
        """Build a record from validated audit.json content."""
        return cls(
            status=d["status"],
            run=d["run"],
            model=d["model"],
            baseline=d.get("baseline"),
            config=d["config"],
            data=d["data"],
            checks=tuple(CheckRecord.from_dict(c) for c in d["checks"]),
            not_run=tuple(NotRun(**n) for n in d.get("not_run", ())),
            deltas=tuple(Delta(**x) for x in d.get("deltas", ())),
            limitations=tuple(d.get("limitations", ())),
            artifacts=dict(d.get("artifacts", {})),
            schema_version=d["schema_version"],
        )


def _num(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _clean(obj: Any) -> Any:
    """Make data JSON-safe: NaN/inf → None, tuples → lists, numpy/torch scalars → Python."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and torch tensors
        return _clean(obj.tolist())
    if hasattr(obj, "item"):
        return _clean(obj.item())
    return str(obj)


def policy_audits(config: dict[str, Any]) -> list[str]:
    """The audit names a record's resolved policy lists, in order.

    A record written before 1.1 does not name its audits; it was judged by the shipped policy of
    its time, whose order :data:`AUDITS_BEFORE_1_1` keeps.
    """
    audits = (config.get("policy") or {}).get("audits")
    if audits is None:
        return list(AUDITS_BEFORE_1_1)
    return [a["name"] for a in audits if isinstance(a, dict) and "name" in a]


def ordered_audits(order: Sequence[str], seen: Sequence[str]) -> list[str]:
    """The audits in ``seen``: those in ``order`` first, in that order, then the rest as seen."""
    present = set(seen)
    names = [a for a in order if a in present]
    for a in seen:
        if a not in names:
            names.append(a)
    return names
