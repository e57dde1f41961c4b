"""Representation: is there a direction that separates harmful from harmless prompts?

The direction is chosen among difference-of-means candidates by its causal effect (selection), then
its separation is measured on the held-out test split, where it was neither fit nor selected.
"""

import pytest

pytestmark = pytest.mark.representation


def test_separation_auroc(audit, findings):
    """Separation (AUROC) of held-out prompts at the direction's layer."""
    d = findings.direction()
    threshold = audit.threshold("representation.separation_auroc")
    audit.check(
        "representation.separation_auroc",
        d.selected_auroc,
        figures=[d.separation_figure(threshold), d.grid_figure()],
        details={
            "direction": d.direction,
            "passed_filters": d.passed_filters,
            "refusal_tokens": d.refusal_tokens,
            "prompt_counts": d.prompt_counts,
            "forward_passes": d.forward_passes,
            "extraction_and_selection_s": d.wall_s,
            "alternative_cosine_per_layer": d.alternative_cosine,
        },
    )
