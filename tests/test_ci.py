"""CI that cannot lie: required checks, exit codes, JUnit and pytest-html metadata, a series
audited by separate jobs and merged by ``trend``.

The audit files here judge synthetic figures; the tiny model is loaded where a fingerprint is
wanted. The series test runs each checkpoint's audit in its own process, as CI jobs would.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from planted import write_fixtures
from test_trend import check, record

from refusal_probe.audit.policy import load_policy
from refusal_probe.audit.required import parse_required, unmet
from refusal_probe.errors import PolicyError
from refusal_probe.model.loading import LoadOptions, load_model
from refusal_probe.report.ci import RunOutcome, environment, suite_properties, worst
from refusal_probe.report.schema import load_schema
from refusal_probe.report.series import natural_key, runs_in
from refusal_probe.testing import audit_options, make_tiny_model

POLICY = """\
version = 1

[settings]
resamples = 200

[demo]
description = "a demo audit"

[demo.rate]
at_least = 0.9
unit = "probability"
rationale = "A demo bar for rates."

[demo.cost]
at_most = 0.1
unit = "nats"
rationale = "A demo bar for costs."

[finetune]
description = "a demo fine-tune audit"

[finetune.kept]
at_least = 0.5
unit = "cosine"
rationale = "A demo bar for a fine-tune."
"""
AUDITS = '''
import pytest
from refusal_probe.stats.intervals import Interval



@pytest.mark.demo
def test_rate(audit, findings):
    """Synthetic refusal rate."""
    findings.identity  # load the model: its fingerprint goes to the record
    audit.check("demo.rate", Interval({v}, {v} - 0.03, {v} + 0.03, n=100, method="wilson"))


@pytest.mark.demo
def test_cost(audit):
    """Synthetic KL cost."""
    {cost}


@pytest.mark.finetune
def test_kept(audit, baseline):
    """Needs a baseline."""
    audit.check("finetune.kept", Interval.exact(0.9))
'''
COST_RUNS = 'audit.check("demo.cost", Interval(0.02, 0.01, 0.03, n=50, method="bootstrap"))'
COST_SKIPS = 'pytest.skip("no data for the cost")'


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ci-env")
    model = make_tiny_model(root / "step-500", "llama", seed=0)
    # In-process pytester runs drop the modules they imported; some (datasets, via the bridge)
    # cannot be imported twice. Loading once here keeps them imported for every inner run.
    load_model(str(model), LoadOptions(cache_dir=str(root / "convert")))
    return {
        "model": model,
        "model2": make_tiny_model(root / "step-1000", "llama", seed=1),
        "prompts": write_fixtures(root / "prompts"),
        "cache": root / "cache",
    }


def project(
    pytester: pytest.Pytester, env: dict[str, Path], *, cost: str = COST_SKIPS, v: float = 0.95
) -> list[str]:
    pytester.makefile(".toml", policy=POLICY)
    pytester.makepyfile(test_audits=AUDITS.format(cost=cost, v=v))
    return audit_options(env)


def record_of(pytester: pytest.Pytester) -> dict:
    """The newest run's audit.json, checked against the schema."""
    runs = [p for p in (pytester.path / "reports").glob("*/*/audit.json") if "latest" not in str(p)]
    data = json.loads(max(runs, key=lambda p: p.parent.name).read_text())
    jsonschema.validate(data, load_schema())
    return data


# --- --require-checks ---------------------------------------------------------------------------


def test_parse_required_reads_all_ids_and_audits(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.toml")
    assert parse_required(None, policy) is None and parse_required(" ", policy) is None
    every = parse_required("all", policy)
    assert every is not None and every.ids == ("demo.rate", "demo.cost", "finetune.kept")
    assert every.named == frozenset()
    named = parse_required("demo, finetune.kept", policy)
    assert named is not None and named.named == {"demo.rate", "demo.cost", "finetune.kept"}
    with pytest.raises(PolicyError, match="demo.nope is not a check or audit"):
        parse_required("all,demo.nope", policy)
    na = [{"id": "finetune.kept", "kind": "not_applicable", "reason": "no --baseline"}]
    assert unmet(every, ["demo.rate", "demo.cost"], na) == []
    assert [u.id for u in unmet(named, ["demo.rate", "demo.cost"], na)] == ["finetune.kept"]
    assert str(unmet(every, [], [])[0]) == "demo.rate (no test recorded it)"


def test_a_skipped_check_is_green_unless_required(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    args = project(pytester, env)
    r = pytester.runpytest(*args)
    assert r.ret == pytest.ExitCode.OK  # what CI saw before: most checks may not have run
    r.assert_outcomes(passed=1, skipped=2)
    r = pytester.runpytest(*args, "--require-checks", "all")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(
        [
            "*finetune.kept*not applicable: no --baseline given*",
            "required checks that did not run (exit 1):",
            "  demo.cost (skipped: no data for the cost)",
        ]
    )
    assert "finetune.kept (" not in r.stdout.str()  # not applicable: not counted by `all`
    kinds = {n["id"]: n["kind"] for n in record_of(pytester)["not_run"]}
    assert kinds == {"demo.cost": "skipped", "finetune.kept": "not_applicable"}


def test_required_checks_from_a_list_and_from_the_ini(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    args = project(pytester, env, cost=COST_RUNS)
    assert pytester.runpytest(*args, "--require-checks", "all").ret == pytest.ExitCode.OK
    assert pytester.runpytest(*args, "--require-checks=demo").ret == pytest.ExitCode.OK
    # A fine-tune check named explicitly is required even without --baseline.
    r = pytester.runpytest(*args, "--require-checks", "demo.rate,finetune.kept")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["  finetune.kept (not_applicable: no --baseline given*"])
    shutil.rmtree(pytester.path / "reports")
    pytester.makeini("[pytest]\naudit_require_checks = finetune\n")
    r = pytester.runpytest(*args)
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    required = record_of(pytester)["run"]["required"]
    assert required["checks"] == ["finetune.kept"] and len(required["unmet"]) == 1


def test_an_unknown_required_check_stops_before_any_test(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    r = pytester.runpytest(*project(pytester, env), "--require-checks", "demo.rat")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--require-checks demo.rat: demo.rat is not a check or audit of*"])
    assert "Traceback" not in r.stderr.str() and not (pytester.path / "reports").exists()


def test_audit_help_lists_the_option_and_the_exit_codes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "refusal_probe", "audit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--require-checks" in out and "exit codes" in out
    codes = re.findall(r"^  ([0-9])  ", out, flags=re.M)
    assert codes == ["0", "1", "2", "3", "4", "5"]


def test_pytests_own_strict_is_left_alone(pytester: pytest.Pytester, env: dict[str, Path]) -> None:
    args = project(pytester, env, cost=COST_RUNS, v=0.9)  # 0.9 [0.87, 0.93] straddles 0.9
    r = pytester.runpytest(*args, "--strict")
    assert r.ret == pytest.ExitCode.OK
    assert pytester.runpytest(*args, "--strict-verdicts").ret == pytest.ExitCode.TESTS_FAILED


# --- JUnit XML and pytest-html -----------------------------------------------------------------


def test_junit_has_suite_properties_and_a_property_per_field(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    args = project(pytester, env, cost=COST_RUNS)
    r = pytester.runpytest(*args, "--junitxml=junit.xml", "--require-checks=all")
    assert r.ret == pytest.ExitCode.OK
    data = record_of(pytester)
    root = ET.parse(pytester.path / "junit.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["refusal_probe.model"] == str(env["model"])
    assert re.fullmatch(r"[0-9a-f]{16,}", props["refusal_probe.fingerprint"])
    assert props["refusal_probe.fingerprint"] == data["model"]["fingerprint"]
    assert props["refusal_probe.verdict"] == data["summary"]["verdict"] == "pass"
    assert props["refusal_probe.policy_sha256"] == data["config"]["policy"]["sha256"]
    assert props["refusal_probe.config_sha256"] == data["config"]["sha256"]
    report = Path(props["refusal_probe.report"])
    assert report.name == "index.html" and (pytester.path / report).is_file()
    case = next(c for c in suite.iter("testcase") if c.get("name") == "test_rate")
    fields = {p.get("name"): p.get("value") for p in case.findall("properties/property")}
    check = next(c for c in data["checks"] if c["id"] == "demo.rate")
    assert fields["check:demo.rate:verdict"] == "pass"
    assert float(fields["check:demo.rate:value"]) == check["value"]
    assert float(fields["check:demo.rate:lower"]) == check["lo"]
    assert float(fields["check:demo.rate:upper"]) == check["hi"]
    assert float(fields["check:demo.rate:threshold"]) == 0.9
    assert fields["check:demo.rate:bound"] == "at_least"
    assert fields["check:demo.rate:n"] == "100" and fields["check:demo.rate:method"] == "wilson"
    assert fields["check:demo.rate:unit"] == "probability"


def test_pytest_html_environment_names_model_fingerprint_and_policy(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    args = project(pytester, env, cost=COST_RUNS)
    r = pytester.runpytest(*args, "--html=page.html", "--self-contained-html")
    assert r.ret == pytest.ExitCode.OK
    data = record_of(pytester)
    page = (pytester.path / "page.html").read_text()
    # pytest-html keeps its data as JSON in the page: read the Environment table from there.
    blob = re.search(r'data-jsonblob="([^"]*)"', page)
    assert blob is not None
    environment = json.loads(html.unescape(blob.group(1)))["environment"]
    assert environment["Model"] == str(env["model"])
    assert environment["Model fingerprint"] == data["model"]["fingerprint"] != ""
    assert environment["Policy sha256"] == data["config"]["policy"]["sha256"]
    assert environment["Audit verdict"] == "pass"


# --- a series across machines ------------------------------------------------------------------


def test_a_series_audited_by_separate_jobs_is_merged_by_trend(
    pytester: pytest.Pytester, env: dict[str, Path], tmp_path: Path
) -> None:
    shared = tmp_path / "shared-reports"
    base = project(pytester, env, cost=COST_RUNS)
    base = base[: base.index("--model")] + base[base.index("--model") + 2 :]
    base[base.index("--report-dir") + 1] = str(shared)
    # Two jobs, the later checkpoint first, each its own process (a CI matrix, a Slurm array).
    for model, v in ((env["model2"], 0.8), (env["model"], 0.95)):
        pytester.makepyfile(test_audits=AUDITS.format(cost=COST_RUNS, v=v))
        r = pytester.runpytest_subprocess(*base, "--model", str(model))
        assert r.ret == (pytest.ExitCode.TESTS_FAILED if v == 0.8 else pytest.ExitCode.OK)
    for link in shared.glob("*/latest"):  # artifact stores drop symbolic links
        link.unlink()
    out = subprocess.run(
        [sys.executable, "-m", "refusal_probe", "trend", str(shared), "--report-dir", str(shared)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "trend of 2 checkpoints" in out.stdout
    trend = json.loads((shared / "trend" / "latest" / "trend.json").read_text())
    points = {c["id"]: [p["verdict"] for p in c["points"]] for c in trend["checks"]}
    labels = [c["label"] for c in trend["checkpoints"]]
    assert labels == ["step-500", "step-1000"]  # natural order, not the order the jobs ran
    assert points["demo.rate"] == ["pass", "fail"]
    fingerprints = {c["fingerprint"] for c in trend["checkpoints"]}
    assert len(fingerprints) == 2 and "" not in fingerprints
    # The trend page does not count as a checkpoint when the folder is merged again.
    assert [p.parent.name for p in runs_in(shared)] == ["step-500", "step-1000"]


def test_runs_in_prefers_the_newest_complete_run(tmp_path: Path) -> None:
    def run(model: str, run_id: str, status: str) -> None:
        folder = tmp_path / model / run_id
        folder.mkdir(parents=True)
        record = {"model": {"spec": f"ck/{model}"}, "status": status, "run": {"id": run_id}}
        (folder / "audit.json").write_text(json.dumps(record))

    run("step-10", "20260101T000000Z-aaaaaa", "complete")
    run("step-10", "20260102T000000Z-bbbbbb", "interrupted")
    run("step-9", "20260101T000000Z-cccccc", "errored")
    (tmp_path / ".step-8-partial" / "x").mkdir(parents=True)
    got = [(p.parent.name, p.name[-6:]) for p in runs_in(tmp_path)]
    assert got == [("step-9", "cccccc"), ("step-10", "aaaaaa")]
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


def test_a_series_names_each_checkpoint_in_the_suite_properties() -> None:
    a = record("ck/step-1", "20260101T000000Z-aaaaaa", check("demo.rate", 0.95, "pass"))
    b = record("ck/step-2", "20260101T000000Z-bbbbbb", check("demo.rate", 0.5, "fail"))
    outcomes = [
        RunOutcome("step-1", "ck/step-1", a, Path("r/step-1/run")),
        RunOutcome("step-2", "ck/step-2", b, None, ("demo.cost (skipped: no data)",)),
        RunOutcome("step-3", "ck/step-3", None),
    ]
    props = suite_properties(outcomes, Path("r/trend/t"))
    assert len(props) == len(dict(props))  # no name twice
    p = dict(props)
    assert p["refusal_probe.verdict"] == "fail"
    assert p["refusal_probe.trend"] == str(Path("r/trend/t/index.html"))
    assert p["refusal_probe.step-1.report"] == str(Path("r/step-1/run/index.html"))
    assert p["refusal_probe.step-1.fingerprint"] == "ck/step-1"[-16:]
    assert p["refusal_probe.step-2.unmet_required"] == "demo.cost (skipped: no data)"
    assert "refusal_probe.step-2.report" not in p and p["refusal_probe.step-3.model"] == "ck/step-3"
    rows = environment(outcomes)
    assert rows["step-2: Audit verdict"] == "fail" and rows["step-1: Model"] == "ck/step-1"
    assert worst(["pass", "inconclusive"]) == "inconclusive" and worst([]) == "not_run"
    assert dict(suite_properties(outcomes[:1]))["refusal_probe.verdict"] == "pass"
