"""Representation: is there a direction that separates harmful from harmless prompts?

The direction is chosen among difference-of-means candidates by its causal effect (selection); when
no candidate passes selection's filters, it is the candidate that best separates the validation
split. Either way its separation is measured on the held-out test split, where it was neither fit
nor chosen, and shown beside the same figure split by the model's behaviour and by category.
"""

from dataclasses import asdict

import pytest

from refusal_probe.audit.separation import breakdown_figure, separation_breakdown

pytestmark = pytest.mark.representation


def test_separation_auroc(audit, findings):
    """Separation (AUROC) of held-out prompts at the direction's layer."""
    d = findings.direction()
    threshold = audit.threshold("representation.separation_auroc")
    breakdown = separation_breakdown(
        d, findings.completions(), findings.fixtures, findings.bootstrap
    )
    audit.check(
        "representation.separation_auroc",
        d.selected_auroc,
        figures=[d.separation_figure(threshold), breakdown_figure(breakdown), d.grid_figure()],
        details={
            "direction": d.direction,
            "chosen_by": d.chosen_by,
            "chosen_on": d.chosen_on,
            "passed_filters": d.passed_filters,
            "breakdown": [asdict(r) for r in breakdown],
            "validation_auroc": d.validation_auroc,
            "refusal_tokens": d.refusal_tokens,
            "prompt_counts": d.prompt_counts,
            "forward_passes": d.forward_passes,
            "extraction_and_selection_s": d.wall_s,
            "alternative_cosine_per_layer": d.alternative_cosine,
        },
    )
