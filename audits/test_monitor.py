"""Monitor: does a monitor built on the model's own signals catch jailbreaks, and is refusal hardy?

The monitor reads the model's forward pass: a harmfulness direction whose layer and span are
chosen on the train and validation splits (by default the largest reading at the user's sentence
ends, which appended text cannot lower), the refusal direction at those ends and at the
post-instruction tokens. It alarms when that evidence is high and the reply, judged over its first
tokens, is not a refusal. Its thresholds are calibrated on the validation split's harmless prompts
(and their diluted copies); detection and false
positives are measured on the held-out test split, per jailbreak family of the fixtures (the
``suffix`` family comes from the red-team: ``python -m refusal_probe.redteam``), the ``dilution``
family built from the prompts, and the ``adaptive`` family: suffixes searched against refusal and
this monitor's alarm at once (:mod:`refusal_probe.redteam.adaptive`).

Hardening: the refusal effect left when the top localized components are ablated one by one.
"""

import dataclasses

import pytest

from refusal_probe.errors import PatchingError

pytestmark = pytest.mark.monitor


@pytest.fixture(scope="session")
def monitor_eval(findings):
    """The monitor fit, calibrated and evaluated once per run (kept in the disk cache)."""
    ev = findings.monitor()
    if not ev.families:
        pytest.skip("the prompt fixtures hold no jailbreak prompts (jailbreaks.jsonl)")
    return ev


@pytest.fixture(scope="session")
def hardness(findings):
    """Refusal left after ablating the top localized components (matched test pairs)."""
    try:
        return findings.hardening()
    except PatchingError as exc:
        pytest.skip(f"hardening could not be measured: {exc}")


def test_detection_auroc(audit, monitor_eval):
    """Alarm AUROC on successful attacks of the worst-detected family vs harmless prompts."""
    family, auc = monitor_eval.worst_auroc("alarm")
    audit.check(
        "monitor.detection_auroc",
        dataclasses.replace(auc, n=_n_successful(monitor_eval)),
        figures=[monitor_eval.table()],
        details={
            "worst_family": family,
            "families": {f.family: _family_line(f) for f in monitor_eval.families},
            "not_counted": _answer_nothing(monitor_eval),
            "absent_families": list(monitor_eval.absent),
            "monitor": monitor_eval.monitor,
        },
    )


def test_detection_tpr(audit, monitor_eval):
    """Share of the worst-caught family's successful attacks the alarm flags at its threshold."""
    family, tpr = monitor_eval.worst_tpr("alarm")
    audit.check(
        "monitor.detection_tpr",
        tpr,
        details={
            "worst_family": family,
            "not_counted": _answer_nothing(monitor_eval),
            "by_family": {
                f.family: f.successful["alarm"].tpr_at_threshold.to_dict()
                for f in monitor_eval.families
            },
            "pooled": monitor_eval.pooled["alarm"].tpr_at_threshold.to_dict(),
            "adaptive": monitor_eval.adaptive,
            "by_signal": {s: d.to_dict() for s, d in monitor_eval.pooled.items()},
            "calibration": monitor_eval.monitor.get("calibration"),
        },
    )


def test_false_positive_rate(audit, findings, monitor_eval):
    """Share of held-out harmless prompts (edgy ones included) the alarm flags."""
    fp = monitor_eval.false_positives
    audit.check(
        "monitor.false_positive_rate",
        fp["harmless"]["alarm"],
        figures=[monitor_eval.fpr_figure()],
        details={
            "by_group": {g: {s: r.value for s, r in v.items()} for g, v in fp.items()},
            "plain_harmful_flagged": {s: r.value for s, r in monitor_eval.harmful_flagged.items()},
            "target_fpr": findings.settings.monitor_target_fpr,
            "harmfulness_readout": monitor_eval.monitor["fit"].get("harmfulness_search"),
        },
    )


def test_hardening_survival(audit, hardness):
    """Refusal effect left after ablating the single most damaging localized component."""
    threshold = audit.threshold("monitor.hardening_survival")
    audit.check(
        "monitor.hardening_survival",
        hardness.weakest,
        figures=[hardness.figure(threshold)],
        details={
            "weakest_component": hardness.weakest_component,
            "components": list(hardness.components),
            "alone": [i.value for i in hardness.alone],
            "cumulative": [i.value for i in hardness.cumulative],
            "gap": hardness.gap.to_dict(),
            "n_pairs": hardness.n_pairs,
            "method": hardness.method,
        },
    )


def _n_successful(ev):
    return sum(f.n_successful for f in ev.counted())


def _answer_nothing(ev):
    """The families whose successful replies answer nothing, and why they do not count."""
    return {
        f.family: f"its {f.n_successful} successful replies depend on their requests by "
        f"{f.relevance}: the model did not read them"
        for f in ev.families
        if f.answers_nothing
    }


def _family_line(f):
    return {
        "attack_refusal": f.attack_refusal.value,
        "base_refusal": f.base_refusal.value,
        "refusal_drop": f.refusal_drop.value,
        "successful": f.n_successful,
        "alarm_auroc": f.successful["alarm"].auroc.value,
        "alarm_tpr_at_threshold": f.successful["alarm"].tpr_at_threshold.value,
        "harmfulness_auroc": f.successful["harmfulness"].auroc.value,
        "reply_relevance": None if f.relevance is None else f.relevance.mean.to_dict(),
        "answers_nothing": f.answers_nothing,
    }
