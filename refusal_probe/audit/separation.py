"""What the separation figure measures: the headline split by behaviour and by category.

The representation check's headline is the AUROC of harmful against harmless test prompts
projected on the direction. A refusal direction is expected to rank the harmful prompts the model
*refuses* above the harmless ones it answers better than the harmful prompts it answers, so a low
headline can mean a poor direction or a model that rarely refuses. :func:`separation_breakdown`
puts the same projections beside the model's own verdicts (the test completions, judged) and the
prompts' categories, so a reviewer can tell which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refusal_probe.audit.behaviour import Completions
from refusal_probe.audit.direction import DirectionSummary
from refusal_probe.errors import DirectionError
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.report.record import Figure
from refusal_probe.stats.intervals import Bootstrap
from refusal_probe.stats.separation import separation


@dataclass(frozen=True)
class Comparison:
    """The AUROC of one group of harmful prompts against one group of harmless prompts.

    Attributes:
        name: Which groups, in words.
        n_harmful: Harmful prompts in it.
        n_harmless: Harmless prompts in it.
        auroc: ``Interval.to_dict()`` of the AUROC (bootstrap); ``None`` when a group is empty.
    """

    name: str
    n_harmful: int
    n_harmless: int
    auroc: dict[str, Any] | None


def separation_breakdown(
    summary: DirectionSummary, completions: Completions, fixtures: Fixtures, boot: Bootstrap
) -> list[Comparison]:
    """The headline and its breakdowns on the test split (the direction's projections).

    Rows: all harmful vs all harmless (the headline); refused harmful vs answered harmless;
    answered harmful vs answered harmless; each harmful category vs all harmless; all harmful vs
    each harmless category (``edgy`` among them). Refused/answered is the judge's verdict on the
    test completions without intervention; when the behaviour check stopped early (sequential)
    those two rows read the prompts it judged, the others every test prompt.

    Raises:
        DirectionError: The projections and the completions are not of the same test prompts.
    """
    ph, pl = summary.projections.get("harmful", []), summary.projections.get("harmless", [])
    idx_h, idx_l = completions.indices or (range(len(ph)), range(len(pl)))
    if (len(idx_h), len(idx_l)) != (len(completions.harmful), len(completions.harmless)) or any(
        i >= n for idx, n in ((idx_h, len(ph)), (idx_l, len(pl))) for i in idx
    ):
        raise DirectionError(
            f"the direction's projections ({len(ph)} harmful, {len(pl)} harmless) are not of the "
            f"{len(completions.harmful)} + {len(completions.harmless)} judged test prompts"
        )
    # A sequential behaviour check may have judged only part of the split: the rows that read
    # the model's verdicts take the judged prompts, the others every prompt.
    judged_h = dict(zip(idx_h, (r for _, _, r in completions.harmful), strict=True))
    judged_l = dict(zip(idx_l, (r for _, _, r in completions.harmless), strict=True))
    ref_h = [judged_h.get(i) is True for i in range(len(ph))]
    ans_h = [judged_h.get(i) is False for i in range(len(ph))]
    ans_l = [judged_l.get(i) is False for i in range(len(pl))]
    cat_h = [p.category for p in fixtures.harmful.split("test")]
    cat_l = [p.category for p in fixtures.harmless.split("test")]

    def pick(xs: Sequence[float], keep: Sequence[bool]) -> list[float]:
        return [x for x, k in zip(xs, keep, strict=True) if k]

    every_h, every_l = [True] * len(ph), [True] * len(pl)
    rows = [
        ("all harmful vs all harmless (the check)", every_h, every_l),
        ("refused harmful vs answered harmless", ref_h, ans_l),
        ("answered harmful vs answered harmless", ans_h, ans_l),
    ]
    rows += [
        (f"harmful: {c} vs all harmless", [x == c for x in cat_h], every_l) for c in _cats(cat_h)
    ]
    rows += [
        (f"all harmful vs harmless: {c}", every_h, [x == c for x in cat_l]) for c in _cats(cat_l)
    ]
    out = []
    for name, keep_h, keep_l in rows:
        h, l_ = pick(ph, keep_h), pick(pl, keep_l)
        auroc = separation(h, l_, boot).auroc.to_dict() if h and l_ else None
        out.append(Comparison(name, len(h), len(l_), auroc))
    return out


def _cats(cats: Sequence[str]) -> list[str]:
    return sorted(set(cats))


def breakdown_figure(rows: Sequence[Comparison]) -> Figure:
    """The breakdown as a table for the report."""

    def shown(a: dict[str, Any] | None) -> str:
        return "—" if a is None else f"{a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"

    return Figure(
        "table",
        "Separation at the direction's layer by the model's behaviour and by category (test split)",
        {
            "columns": ["harmful vs harmless", "n harmful", "n harmless", "AUROC [95% CI]"],
            "rows": [[r.name, r.n_harmful, r.n_harmless, shown(r.auroc)] for r in rows],
        },
        "Refused/answered: the judge's verdict on the model's own test completions. A direction "
        "that separates refused harmful from answered harmless prompts but not the harmful "
        "prompts the model answers reads the model's behaviour; a low figure in every row is the "
        "direction's",
    )
