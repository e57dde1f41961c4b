"""Side-by-side comparison of two audit runs (for example a fine-tune against its parent)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from refusal_probe.atomic import write_text_atomic
from refusal_probe.errors import ReportError
from refusal_probe.report.layers import SEPARATION, LayerChanges, layer_changes
from refusal_probe.report.record import AuditRecord, CheckRecord
from refusal_probe.report.render import environment
from refusal_probe.report.schema import read_record

_RANK = {"pass": 0, "inconclusive": 1, "fail": 2, None: -1}

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class CheckPair:
    """One check in both runs.

    Attributes:
        id: The check id.
        title: What it checks.
        a: The check in run A, or ``None`` if it did not run there.
        b: The check in run B, or ``None``.
        delta: ``b.value - a.value`` when both are numbers.
        change: ``same``, ``worse`` (B's verdict is more severe), ``better``, or
            ``only_a``/``only_b``.
    """

    id: str
    title: str
    a: CheckRecord | None
    b: CheckRecord | None
    delta: float | None
    change: str


@dataclass(frozen=True)
class Comparison:
    """Two runs and what differs between them.

    Attributes:
        a: The first run (usually the baseline).
        b: The second run (usually the candidate).
        pairs: Every check id of either run, in A's order then B's.
        notes: Caveats: different policies, prompt sets, or schema versions.
        layers: What changed per layer (:mod:`refusal_probe.report.layers`), when a run has the
            representation check.
    """

    a: AuditRecord
    b: AuditRecord
    pairs: tuple[CheckPair, ...]
    notes: tuple[str, ...]
    layers: LayerChanges | None = None

    def counts(self) -> dict[str, int]:
        """How many checks got worse, better, stayed the same, or ran in one run only."""
        out = {k: 0 for k in ("worse", "better", "same", "only_a", "only_b")}
        for p in self.pairs:
            out[p.change] += 1
        return out


Candidates = Mapping[int, "Tensor"]
#: Both runs' candidates (A, B); ``None`` where a run has no direction file.
Pair = tuple[Candidates | None, Candidates | None]


def compare_records(
    a: AuditRecord,
    b: AuditRecord,
    candidates: Pair = (None, None),
) -> Comparison:
    """Pair the checks of two runs by id, compare them per layer, note what hinders comparing.

    ``candidates``: each run's per-layer difference-of-means candidates at its direction position
    (its ``direction.safetensors``), for the per-layer cosine; ``None`` leaves the cosine out.
    """
    ids = [c.id for c in a.checks] + [c.id for c in b.checks if a.check(c.id) is None]
    pairs = []
    for cid in ids:
        ca, cb = a.check(cid), b.check(cid)
        delta = (
            cb.value - ca.value
            if ca and cb and ca.value is not None and cb.value is not None
            else None
        )
        if ca is None or cb is None:
            change = "only_a" if cb is None else "only_b"
        else:
            ra, rb = _RANK[ca.verdict], _RANK[cb.verdict]
            change = "same" if ra == rb else ("worse" if rb > ra else "better")
        pairs.append(CheckPair(cid, (cb or ca).title if (cb or ca) else cid, ca, cb, delta, change))
    notes = []
    if a.config["policy"]["sha256"] != b.config["policy"]["sha256"]:
        notes.append(
            "The runs used different policy files; verdicts may differ because the bars differ."
        )
    if a.data.get("sha256") != b.data.get("sha256"):
        notes.append(
            "The runs used different prompt sets; figures are not measured on the same prompts."
        )
    if a.model.get("fingerprint") == b.model.get("fingerprint"):
        notes.append("Both runs audited the same checkpoint (same fingerprint).")
    elif a.model.get("architecture") != b.model.get("architecture"):
        notes.append("The checkpoints have different architectures; directions are not comparable.")
    for r, name in ((a, "A"), (b, "B")):
        if r.status != "complete":
            notes.append(f"Run {name} is incomplete ({r.status}).")
    layers = (
        layer_changes(a, b, *candidates) if a.check(SEPARATION) or b.check(SEPARATION) else None
    )
    return Comparison(a, b, tuple(pairs), tuple(notes), layers)


def render_comparison(cmp: Comparison) -> str:
    """The HTML page of a comparison."""
    return environment().get_template("compare.html").render(c=cmp, counts=cmp.counts())


def compare_files(
    a: str | Path,
    b: str | Path,
    out: str | Path | None = None,
    candidates: Pair = (None, None),
) -> Path:
    """Compare two audit.json files and write the page atomically.

    Args:
        a: The first run's audit.json (or its folder), usually the baseline.
        b: The second run's audit.json (or its folder).
        out: Where to write the page; default ``compare-<runA>-vs-<runB>.html`` beside B's folder.
        candidates: Each run's per-layer candidates (see :func:`compare_records`).

    Raises:
        ReportError: Either file is missing, corrupted or of an unreadable schema version.
    """
    ra, rb = read_record(a), read_record(b)
    html = render_comparison(compare_records(ra, rb, candidates))
    target = (
        Path(out)
        if out
        else Path(b).resolve().parent / f"compare-{ra.run['id']}-vs-{rb.run['id']}.html"
    )
    if Path(b).is_dir() and not out:
        target = Path(b).resolve() / f"compare-{ra.run['id']}-vs-{rb.run['id']}.html"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, html)
    except OSError as exc:
        raise ReportError(f"cannot write the comparison to {target}: {exc}") from exc
    return target
