"""Fine-tune: did the fine-tune keep the baseline's refusal mechanism?

Runs with ``--baseline`` (a parent checkpoint, or the audit.json of its earlier audit); skipped,
with the reason, otherwise.
"""

import pytest

from refusal_probe.audit import ModelBaseline
from refusal_probe.audit.finetune import change_figure
from refusal_probe.errors import PatchingError
from refusal_probe.stats.intervals import Interval

pytestmark = pytest.mark.finetune


def test_direction_cosine(audit, findings, baseline):
    """Cosine of the baseline's refusal direction with the candidate's at the same site."""
    ft = findings.finetune()
    threshold = audit.threshold("finetune.direction_cosine")
    figures = [ft.cosine_figure(threshold)]
    if isinstance(baseline, ModelBaseline):  # a baseline model: its per-layer figures are here
        figures.append(change_figure(baseline.run.direction(), findings.direction(), ft))
    audit.check(
        "finetune.direction_cosine",
        ft.cosine,
        figures=figures,
        details={"layer": ft.layer, "position": ft.position, "per_layer": ft.cosine_per_layer},
    )


def test_direction_transfer(audit, findings, baseline):
    """Share of the candidate's harmful refusals removed by the baseline's direction."""
    ft = findings.finetune()
    audit.check(
        "finetune.direction_transfer",
        ft.transfer,
        details={
            "refused_by_candidate": ft.transfer.n,
            "no_longer_refused": ft.transfer.k,
            "candidate_ablated_rate": ft.candidate_ablated.value,
        },
    )


def test_refusal_drop(audit, findings, baseline):
    """Drop in harmful refusal from the baseline to the candidate."""
    change = findings.refusal_change()
    # the ablated bar where the direction checks ran (asking for it here would compute them)
    ft = findings.finetune() if "finetune" in findings.computed else None
    audit.check(
        "finetune.refusal_drop",
        change.refusal_drop,
        figures=[change.rates_figure(ft.candidate_ablated if ft else None)],
        details={"baseline": change.baseline_rates, "candidate": change.candidate_rates},
    )


def test_circuit_overlap(audit, findings, baseline):
    """Overlap (Jaccard) of the candidate's localized circuit with the baseline's."""
    if not isinstance(baseline, ModelBaseline):
        pytest.skip(
            "the baseline is an earlier audit.json, which holds no circuit to compare; pass the "
            "parent checkpoint as --baseline to compare circuits"
        )
    try:
        mine, theirs = findings.circuit(), baseline.run.circuit()
    except PatchingError as exc:
        pytest.skip(f"a circuit could not be localized: {exc}")
    jaccard = mine.overlap(theirs)
    audit.check(
        "finetune.circuit_overlap",
        Interval(jaccard, jaccard, jaccard, method="exact: the two top-5 sets (no interval)"),
        details={
            "candidate": list(mine.components),
            "baseline": list(theirs.components),
            "shared": sorted(set(mine.components) & set(theirs.components)),
        },
    )
