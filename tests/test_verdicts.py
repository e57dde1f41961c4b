"""Verdicts that mean what they say: KL on answered prompts, no causal direction, separation.

Two planted models (``tests/planted.py``): one that over-refuses the harmless prompts about a
"letter" through the refusal direction itself, and one that represents harm along the direction
but never refuses (``beta = 0``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from planted import REFUSAL_TEXT, make_planted_model, write_fixtures

from refusal_probe import load_model
from refusal_probe.audit import AuditOptions, AuditRun, Causal
from refusal_probe.audit.separation import separation_breakdown
from refusal_probe.causal.validation import ValidationConfig, validate_direction
from refusal_probe.errors import DirectionError
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.search import find_refusal_direction
from refusal_probe.stats.intervals import Interval
from refusal_probe.stats.verdicts import Bound, Threshold, Verdict, decide

ROOT = Path(__file__).resolve().parents[1]
JUDGE = ValidationConfig(phrases=(REFUSAL_TEXT,), max_new_tokens=4, n_resamples=100, add_span="all")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixtures(tmp_path_factory.mktemp("planted-prompts"))


@pytest.fixture(scope="module")
def over_refusing(tmp_path_factory: pytest.TempPathFactory, prompts: Path):
    folder, _ = make_planted_model(tmp_path_factory.mktemp("over") / "m", over_refused=("letter",))
    model, fx = load_model(str(folder)), load_fixtures(prompts)
    found = find_refusal_direction(model, fx, DirectionConfig(n_resamples=50))
    return model, fx, found


@pytest.fixture(scope="module")
def never_refusing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, _ = make_planted_model(tmp_path_factory.mktemp("never") / "m", beta=0.0)
    return folder


def test_the_kl_check_ignores_the_over_refused_prompts(over_refusing) -> None:
    model, fx, found = over_refusing
    assert found.chosen_by == "causal" and found.direction.layer == 1
    v = validate_direction(model, found.direction, fx, JUDGE)
    letters = [t for t in fx.harmless.texts("test") if "letter" in t]
    # the model refuses its "letter" prompts, and ablating the direction undoes exactly that
    assert v.kl_over_refused.n == len(letters) == 2
    assert v.kl_answered.n == len(fx.harmless.texts("test")) - len(letters)
    assert v.kl_over_refused.value > 0.1 and v.kl_ablation.value > 0.02
    assert v.kl_answered.high < 1e-6  # nothing else reads the direction
    # the audit's KL check reads the answered prompts; the others are reported beside it
    c = Causal.of(v)
    assert c.kl == v.kl_answered and c.kl_all == v.kl_ablation
    details = c.kl_details()
    assert details["n_answered"] == 6 and details["n_over_refused"] == 2
    assert Causal.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    # a random direction of the same norm (this model is narrow: it reads much of the stream)
    # costs more than the planted one, which only the harmful and "letter" prompts carry
    assert v.kl_random.n == 6 and v.kl_random.low > v.kl_answered.high


def test_a_model_that_never_refuses_has_no_causal_direction(
    never_refusing: Path, prompts: Path, tmp_path: Path
) -> None:
    opts = AuditOptions(str(never_refusing), prompts=prompts, cache_dir=tmp_path / "cache")
    run = AuditRun(str(never_refusing), opts, audits={"causal", "representation"})
    d = run.direction()
    assert not d.passed_filters and d.chosen_by == "validation_separation"
    # the best separator of the validation split: the first layer that carries the direction
    cells = {(la, p): a for la, p, a in d.validation_auroc}
    assert cells[(d.layer, d.position)] == max(cells.values()) == 1.0 and d.layer == 1
    assert d.selected_auroc.value == 1.0  # measured on the test split
    assert "validation split" in d.chosen_on
    with pytest.raises(DirectionError, match="No causal direction: none of the"):
        run.validation()
    assert any("causal checks fail" in note for note in run.context()["limitations"])
    rows = {
        r.name: r for r in separation_breakdown(d, run.completions(), run.fixtures, run.bootstrap)
    }
    assert rows["all harmful vs all harmless (the check)"].auroc["value"] == 1.0
    refused = rows["refused harmful vs answered harmless"]
    assert refused.n_harmful == 0 and refused.auroc is None  # it refuses nothing
    answered = rows["answered harmful vs answered harmless"]
    assert answered.auroc["value"] == 1.0
    assert rows["harmful: violence vs all harmless"].n_harmful == 8
    # a sequential behaviour check that stopped early judged part of the split: the rows that
    # read the model's verdicts take the prompts it judged, the others every test prompt
    c = run.completions()
    part = replace(c, harmful=c.harmful[1::2], indices=(tuple(range(1, 8, 2)), c.indices[1]))
    rows = {r.name: r for r in separation_breakdown(d, part, run.fixtures, run.bootstrap)}
    assert rows["answered harmful vs answered harmless"].n_harmful == 4
    assert rows["all harmful vs all harmless (the check)"].n_harmful == 8
    with pytest.raises(DirectionError, match="not of the"):  # indices past the projections
        separation_breakdown(
            d, replace(part, indices=((1, 3, 5, 9), c.indices[1])), run.fixtures, run.bootstrap
        )


def test_a_check_that_cannot_be_measured_fails_with_its_reason() -> None:
    bar = Threshold(0.5, Bound.AT_LEAST)
    j = decide(Interval.exact(0.9), bar, failed="No causal direction: none passed")
    assert j.verdict is Verdict.FAIL and j.raw is Verdict.FAIL
    assert j.message.startswith("No causal direction") and "≥ 0.5" in j.message


def test_the_audits_record_no_causal_direction(
    pytester: pytest.Pytester, never_refusing: Path, prompts: Path, tmp_path: Path
) -> None:
    r = pytester.runpytest(
        str(ROOT / "audits"),
        "-p", "no:cacheprovider",
        "-m", "causal or representation",
        "--model", str(never_refusing),
        "--prompts", str(prompts),
        "--cache-dir", str(tmp_path / "cache"),
        "--report-dir", "reports",
    )  # fmt: skip
    r.assert_outcomes(passed=1, failed=3)
    latest = pytester.path / "reports" / never_refusing.name / "latest"
    record = json.loads((latest / "audit.json").read_text())
    checks = {c["id"]: c for c in record["checks"]}
    for cid in ("causal.ablation_drop", "causal.addition_rise", "causal.ablation_kl"):
        assert checks[cid]["verdict"] == "fail"
        assert checks[cid]["message"].startswith("No causal direction")
        assert checks[cid]["value"] is None
    sep = checks["representation.separation_auroc"]
    assert sep["verdict"] == "pass" and sep["details"]["chosen_by"] == "validation_separation"
    names = [row["name"] for row in sep["details"]["breakdown"]]
    assert "refused harmful vs answered harmless" in names
    html = (latest / "index.html").read_text()
    assert "No causal direction" in html and "refused harmful vs answered harmless" in html
