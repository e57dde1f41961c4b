"""Causal validation: does the direction mediate refusal?

Ablating it everywhere should remove refusal of harmful requests, adding it at its layer should
make the model refuse harmless ones, and ablation should cost little on harmless prompts.
"""

import pytest

pytestmark = pytest.mark.causal


def test_ablation_drop(audit, findings):
    """Drop in harmful refusal when the direction is ablated."""
    c = findings.causal()
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
    c = findings.causal()
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
    """KL cost of ablation on harmless prompts (nats)."""
    c = findings.causal()
    audit.check("causal.ablation_kl", c.kl)
