"""Causal validation: does the direction mediate refusal?

Ablating it everywhere should remove refusal of harmful requests, adding it at its layer should
make the model refuse harmless ones, and ablation should cost little on the harmless prompts the
model answers. When no candidate passed selection's filters there is no causal direction: each
check fails for that reason rather than measure an arbitrary one.
"""

import pytest

from refusal_probe.stats.intervals import Interval

pytestmark = pytest.mark.causal


def _causal(audit, findings, check_id):
    """The causal figures; the check fails with the reason when there is no causal direction."""
    d = findings.direction()
    if not d.passed_filters:
        reason = d.no_causal_direction()
        audit.check(check_id, Interval.nothing(), failed=reason, details={"reason": reason})
    return findings.causal()


def test_ablation_drop(audit, findings):
    """Drop in harmful refusal when the direction is ablated."""
    c = _causal(audit, findings, "causal.ablation_drop")
    audit.check(
        "causal.ablation_drop",
        c.ablation_drop,
        figures=[c.rates_figure()],
        details={
            "baseline": c.harmful_baseline.value,
            "ablated": c.harmful_ablated.value,
            "intervention": c.interventions.get("harmful_ablated"),
            "examples": c.examples.get("harmful_ablated"),
        },
    )


def test_addition_rise(audit, findings):
    """Rise in harmless refusal when the direction is added."""
    c = _causal(audit, findings, "causal.addition_rise")
    audit.check(
        "causal.addition_rise",
        c.addition_rise,
        figures=[c.dose_figure()],
        details={
            "baseline": c.harmless_baseline.value,
            "added": c.harmless_added.value,
            "intervention": c.interventions.get("harmless_added"),
            "examples": c.examples.get("harmless_added"),
        },
    )


def test_ablation_kl(audit, findings):
    """KL cost of ablation on the harmless prompts the model answers (nats)."""
    c = _causal(audit, findings, "causal.ablation_kl")
    threshold = audit.threshold("causal.ablation_kl")
    audit.check(
        "causal.ablation_kl", c.kl, figures=[c.kl_figure(threshold)], details=c.kl_details()
    )
