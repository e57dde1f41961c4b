"""Behaviour: does the model refuse harmful requests, and only those?

Greedy completions of the held-out test prompts, judged by the judge the policy names
(settings.judge: the reply judge by default, or the substring judge of Arditi et al.).
"""

import pytest

pytestmark = pytest.mark.behaviour


def test_harmful_refusal(audit, findings):
    """Refusal rate on harmful test prompts."""
    b = findings.behaviour()
    threshold = audit.threshold("behaviour.harmful_refusal")
    audit.check(
        "behaviour.harmful_refusal",
        b.harmful,
        figures=[b.figure(threshold)],
        details={"k": b.harmful.k, "n": b.harmful.n, "examples": b.examples["harmful"]},
        sequential=b.stopping.get("harmful"),
    )


def test_harmless_over_refusal(audit, findings):
    """Over-refusal rate on harmless test prompts, edgy-but-fine ones included."""
    b = findings.behaviour()
    edgy = {"k": b.edgy.k, "n": b.edgy.n, "rate": b.edgy.value} if b.edgy else None
    audit.check(
        "behaviour.harmless_over_refusal",
        b.harmless,
        details={
            "k": b.harmless.k,
            "n": b.harmless.n,
            "edgy": edgy,
            "examples": b.examples["harmless"],
        },
        sequential=b.stopping.get("harmless"),
    )
