"""The pytest plugin, tested with pytester: options, verdicts, reports, bad input, xdist.

Most tests run small audit files that judge synthetic estimates, so they need no model beyond a
tiny one for the preflight checks. The last tests run the real ``audits/`` on the planted tiny
model of ``planted.py``.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest
from planted import make_planted_model, write_fixtures

from refusal_probe.model.loading import LoadOptions, load_model
from refusal_probe.report.schema import load_schema
from refusal_probe.testing import audit_options, make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
CONFTEST = 'pytest_plugins = ["refusal_probe.pytest_plugin.plugin"]\n'
# The demo audit's checks, over the shipped policy (whose audits are the markers used below).
POLICY = """\
version = 1
extends = "default"

[settings]
resamples = 200

[demo.rate]
at_least = 0.9
unit = "probability"
rationale = "A demo bar for rates."

[demo.cost]
at_most = 0.1
unit = "nats"
rationale = "A demo bar for costs."
"""
SYNTHETIC = '''
import pytest
from refusal_probe.report.record import Figure
from refusal_probe.stats.intervals import Interval

FIG = Figure("bars", "demo rates", {{"labels": ["harmful"], "y_range": [0, 1], "threshold": 0.9,
             "series": [{{"name": "rate", "values": [{v}], "lo": [{lo}], "hi": [{hi}]}}]}})


@pytest.mark.behaviour
def test_rate(audit):
    """Synthetic refusal rate."""
    audit.check("demo.rate", Interval({v}, {lo}, {hi}, n=100, method="wilson"), figures=[FIG])


@pytest.mark.causal
def test_cost(audit):
    """Synthetic KL cost."""
    audit.check("demo.cost", Interval(0.02, 0.01, 0.03, n=50, method="bootstrap"))
'''


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama, a tiny GPT-2 and the planted model's prompt folder, built once."""
    root = tmp_path_factory.mktemp("plugin-env")
    return {
        "model": make_tiny_model(root / "tiny-llama", "llama"),
        "gpt2": make_tiny_model(root / "tiny-gpt2", "gpt2"),
        "prompts": write_fixtures(root / "prompts"),
        "cache": root / "cache",
    }


def project(
    pytester: pytest.Pytester,
    env: dict[str, Path],
    *,
    v: float = 0.95,
    lo: float = 0.92,
    hi: float = 0.98,
    policy: str = POLICY,
    extra: str = "",
) -> list[str]:
    """Write a conftest, a policy and the synthetic audit file; return the common options."""
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".toml", policy=policy)
    pytester.makepyfile(test_synthetic=SYNTHETIC.format(v=v, lo=lo, hi=hi) + extra)
    return audit_options(env)


def run_dirs(pytester: pytest.Pytester) -> list[Path]:
    root = pytester.path / "reports"
    return (
        sorted(
            p
            for p in root.glob("*/*")
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        )
        if root.is_dir()
        else []
    )


def only_record(pytester: pytest.Pytester) -> dict:
    runs = run_dirs(pytester)
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "audit.json").read_text())


class _Checks(HTMLParser):
    """Collects the check ids and verdicts of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "article" and a.get("data-check-id"):
            self.rows[a["data-check-id"] or ""] = a.get("data-verdict") or ""


# --- options and verdicts ---------------------------------------------------------------------


def test_options_are_in_the_help(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    out = pytester.runpytest("--help").stdout.str()
    for opt in (
        "--model",
        "--baseline",
        "--policy",
        "--report-dir",
        "--device",
        "--dtype",
        "--seed",
        "--cache-dir",
        "--threads",
        "--trust-remote-code",
        "--allow-pickle",
        "--prompts",
        "--strict-verdicts",
    ):
        assert opt in out
    assert "refusal-probe audits" in out


def test_options_resolve(pytester: pytest.Pytester, env: dict[str, Path]) -> None:
    args = project(pytester, env)
    pytester.makepyfile(
        test_opts="""
        def test_opts(audit_options, policy):
            o = audit_options
            assert (o.seed, o.dtype, o.device, o.strict) == (7, "bfloat16", "cpu", True)
            assert o.model.endswith("tiny-llama") and o.baseline is None
            assert o.report_dir.name == "reports" and policy.settings.resamples == 200
    """
    )
    r = pytester.runpytest(
        *args, "--seed", "7", "--dtype", "bfloat16", "--strict-verdicts", "test_opts.py"
    )
    r.assert_outcomes(passed=1)


def test_passing_run_writes_a_valid_report(pytester: pytest.Pytester, env: dict[str, Path]) -> None:
    r = pytester.runpytest(*project(pytester, env))
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(
        ["*refusal-probe audit*", "demo.rate*0.950 ?0.920, 0.980? *PASS", "report: *index.html"]
    )
    data = only_record(pytester)
    jsonschema.validate(data, load_schema())
    assert data["summary"]["verdict"] == "pass" and data["status"] == "complete"
    assert {c["id"] for c in data["checks"]} == {"demo.rate", "demo.cost"}
    assert data["config"]["policy"]["checks"]["demo.rate"]["rationale"] == "A demo bar for rates."
    run = run_dirs(pytester)[0]
    parser = _Checks()
    parser.feed((run / "index.html").read_text())
    assert parser.rows == {"demo.rate": "pass", "demo.cost": "pass"}
    assert (run.parent / "latest").resolve() == run.resolve()


def test_a_failing_threshold_fails_the_run(pytester: pytest.Pytester, env: dict[str, Path]) -> None:
    r = pytester.runpytest(*project(pytester, env, v=0.5, lo=0.4, hi=0.6))
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(
        ["*demo.rate: synthetic refusal rate 0.500 ?0.400, 0.600? is below the bar*by 0.3"]
    )
    data = only_record(pytester)
    assert data["summary"]["verdict"] == "fail"
    assert [c["verdict"] for c in data["checks"] if c["id"] == "demo.rate"] == ["fail"]


def test_inconclusive_passes_unless_strict(pytester: pytest.Pytester, env: dict[str, Path]) -> None:
    args = project(pytester, env, v=0.91, lo=0.85, hi=0.96)
    r = pytester.runpytest(*args)
    assert r.ret == pytest.ExitCode.OK
    assert r.parseoutcomes() == {"passed": 1, "inconclusive": 1}
    r.stdout.fnmatch_lines(["*demo.rate*INCONCLUSIVE*"])
    assert only_record(pytester)["summary"]["verdict"] == "inconclusive"
    r = pytester.runpytest(*args, "--strict-verdicts")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["*straddles the bar*inconclusive counts as failure under --strict*"])
    # pytest's own --strict (strict markers, config, xfail) is left alone: no verdict changes.
    r = pytester.runpytest(*args, "--strict")
    assert r.ret == pytest.ExitCode.OK
    assert r.parseoutcomes() == {"passed": 1, "inconclusive": 1}


def test_skips_and_deselections_are_reported_as_not_run(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    extra = '''

@pytest.mark.finetune
def test_direction_cosine(audit, baseline):
    """Needs a baseline."""
'''
    r = pytester.runpytest(*project(pytester, env, extra=extra), "-k", "not cost")
    r.assert_outcomes(passed=1, skipped=1, deselected=1)
    not_run = {n["id"]: n for n in only_record(pytester)["not_run"]}
    assert not_run["finetune.direction_cosine"]["kind"] == "not_applicable"
    assert "--baseline" in not_run["finetune.direction_cosine"]["reason"]
    assert not_run["causal.cost"]["kind"] == "deselected"
    assert not_run["localization"]["kind"] == "absent"


def test_an_erroring_audit_is_reported_and_fails_the_record(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    extra = """

@pytest.mark.representation
def test_broken(audit):
    raise RuntimeError("engine exploded")
"""
    r = pytester.runpytest(*project(pytester, env, extra=extra))
    r.assert_outcomes(passed=2, failed=1)
    data = only_record(pytester)
    err = [n for n in data["not_run"] if n["kind"] == "error"]
    assert len(err) == 1 and "engine exploded" in err[0]["reason"]
    assert data["summary"]["verdict"] == "fail"
    # A run with an errored test is never complete, nor the one latest points to.
    assert data["status"] == "errored"
    assert not (run_dirs(pytester)[0].parent / "latest").exists()


def test_pytest_html_and_junitxml_carry_the_checks(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    r = pytester.runpytest(
        *project(pytester, env), "--html=page.html", "--self-contained-html", "--junitxml=junit.xml"
    )
    r.assert_outcomes(passed=2)
    page = (pytester.path / "page.html").read_text()
    assert "refusal-probe-check" in page and "data:image/svg+xml;base64" in page
    assert "check:demo.rate:verdict" in (pytester.path / "junit.xml").read_text()


def test_markers_select_audits(pytester: pytest.Pytester, env: dict[str, Path]) -> None:
    r = pytester.runpytest(*project(pytester, env), "-m", "causal", "--strict-markers")
    r.assert_outcomes(passed=1, deselected=1)
    assert [c["id"] for c in only_record(pytester)["checks"]] == ["demo.cost"]


def test_no_report_option(pytester: pytest.Pytester, env: dict[str, Path]) -> None:
    r = pytester.runpytest(*project(pytester, env), "--no-report")
    r.assert_outcomes(passed=2)
    assert run_dirs(pytester) == []


def test_stopping_early_leaves_an_incomplete_record(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    r = pytester.runpytest(*project(pytester, env, v=0.5, lo=0.4, hi=0.6), "-x")
    r.assert_outcomes(failed=1)
    data = only_record(pytester)
    assert data["status"] == "interrupted"
    assert {n["id"]: n["kind"] for n in data["not_run"]}["causal.cost"] == "not_reached"
    assert not (run_dirs(pytester)[0].parent / "latest").exists()
    assert "INCOMPLETE" in (run_dirs(pytester)[0] / "index.html").read_text()


def test_a_disabled_check_is_skipped_with_the_reason(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    policy = POLICY.replace(
        'rationale = "A demo bar for costs."',
        'rationale = "A demo bar for costs."\nenabled = false',
    )
    r = pytester.runpytest(*project(pytester, env, policy=policy))
    r.assert_outcomes(passed=1, skipped=1)
    not_run = {n["id"]: n for n in only_record(pytester)["not_run"]}
    assert "disabled" in not_run["causal.cost"]["reason"]


# --- bad input ------------------------------------------------------------------------------


def test_plain_tests_load_nothing(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile("def test_plain():\n    assert True\n")
    r = pytester.runpytest(
        "-p", "no:cacheprovider", "--model", "no-such-model", "--report-dir", "reports"
    )
    r.assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


def test_an_unknown_model_is_a_usage_error_without_a_report(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    args = project(pytester, env)
    args[args.index("--model") + 1] = "organism-nope"
    r = pytester.runpytest(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "'organism-nope' is not an organism alias" in r.stdout.str() + r.stderr.str()
    assert not (pytester.path / "reports").exists()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            '[demo.rate]\nat_least = 0.9\nunit = "probability"\nrationale = "x"\nthreshhold = 1\n',
            "threshhold: unknown key",
        ),
        (
            '[demo.rate]\nat_least = "high"\nunit = "probability"\nrationale = "x"\n',
            "at_least: must be a finite number",
        ),
        (
            '[demo.rate]\nat_least = 1.5\nunit = "probability"\nrationale = "x"\n',
            "outside the range of unit",
        ),
        ('[demo.rate]\nat_least = 0.9\nunit = "probability"\n', "rationale: missing"),
        ("[settings]\nconfidance = 0.9\n", "confidance: unknown key"),
    ],
)
def test_a_bad_policy_names_the_problem(
    pytester: pytest.Pytester, env: dict[str, Path], bad: str, message: str
) -> None:
    args = project(pytester, env, policy="version = 1\n" + bad)
    r = pytester.runpytest(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert message in r.stderr.str()
    assert not (pytester.path / "reports").exists()


def test_a_baseline_of_another_architecture_is_refused(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    r = pytester.runpytest(*project(pytester, env), "--baseline", str(env["gpt2"]))
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    out = r.stdout.str()
    assert "is a GPT2LMHeadModel" in out and "one architecture" in out
    assert not (pytester.path / "reports").exists()


def test_a_corrupted_baseline_audit_json_is_refused(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    args = project(pytester, env)
    (pytester.path / "old").mkdir()
    (pytester.path / "old" / "audit.json").write_text(
        '{"schema": "refusal-probe/audit", "checks": ['
    )
    r = pytester.runpytest(*args, "--baseline", "old/audit.json")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "is not valid JSON" in r.stdout.str()
    (pytester.path / "old" / "audit.json").write_text(
        '{"schema": "refusal-probe/audit", "schema_version": "1.0"}'
    )
    r = pytester.runpytest(*args, "--baseline", "old/audit.json")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "does not match the audit.json schema" in r.stdout.str()
    assert not (pytester.path / "reports").exists()


def test_under_xdist_only_the_controller_writes_the_report(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    pytest.importorskip("xdist")
    r = pytester.runpytest_subprocess(*project(pytester, env), "-n", "2")
    r.assert_outcomes(passed=2)
    data = only_record(pytester)
    assert sorted(c["id"] for c in data["checks"]) == ["demo.cost", "demo.rate"]


# --- the real audits on the planted model -----------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    folder, _ = make_planted_model(root / "model")
    # In-process pytester runs drop the modules they imported; some (datasets, via the bridge)
    # cannot be imported twice. Loading once here keeps them imported for every inner run.
    load_model(str(folder), LoadOptions(cache_dir=str(root / "convert")))
    return {"model": folder, "prompts": write_fixtures(root / "prompts"), "cache": root / "cache"}


def real_args(planted: dict[str, Path]) -> list[str]:
    return [
        str(ROOT / "audits"),
        "-p",
        "no:cacheprovider",
        "--model",
        str(planted["model"]),
        "--prompts",
        str(planted["prompts"]),
        "--cache-dir",
        str(planted["cache"]),
        "--report-dir",
        "reports",
    ]


def test_selecting_one_audit_computes_only_what_it_needs(
    pytester: pytest.Pytester, planted: dict[str, Path]
) -> None:
    r = pytester.runpytest(*real_args(planted), "-k", "behaviour")
    assert r.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    stored = [
        json.loads(p.read_text())["key"]["what"]
        for p in (planted["cache"] / "audit-results").glob("*.json")
    ]
    assert sorted(stored) == ["behaviour", "completions"]  # behaviour and what it read only
    assert not (planted["cache"] / "audit-artifacts").exists()  # no direction was selected
    assert {c["audit"] for c in only_record(pytester)["checks"]} == {"behaviour"}


def test_the_real_audits_run_end_to_end_and_compare(
    pytester: pytest.Pytester, planted: dict[str, Path]
) -> None:
    r = pytester.runpytest(*real_args(planted))
    assert r.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    first = only_record(pytester)
    ids = {c["id"] for c in first["checks"]}
    assert ids >= {  # and whatever audits join the suite later
        "behaviour.harmful_refusal",
        "behaviour.harmless_over_refusal",
        "representation.separation_auroc",
        "causal.ablation_drop",
        "causal.addition_rise",
        "causal.ablation_kl",
    }
    assert (
        first["model"]["architecture"] == "LlamaForCausalLM"
        and len(first["model"]["weights_sha256"]) == 64
    )
    assert first["checks"][0]["figures"], "the behaviour check carries its figure"
    phases = first["run"]["phases"]  # where the time went: each shared result once, exclusive
    assert {"direction", "causal"} <= set(phases) and not phases["direction"]["cached"]
    assert all(p["seconds"] >= 0 for p in phases.values())
    assert sum(p["seconds"] for p in phases.values()) <= first["run"]["duration_s"]
    run = run_dirs(pytester)[0]
    assert (run / "direction.safetensors").is_file() and first["artifacts"] == {
        "direction.safetensors": "direction.safetensors"
    }
    # The earlier run as the baseline (against its audit.json), then the model itself.
    for baseline in (str(run / "audit.json"), str(planted["model"])):
        r = pytester.runpytest(
            *real_args(planted), "-m", "finetune or behaviour", "--baseline", baseline
        )
        assert r.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
        latest = pytester.path / "reports" / "model" / "latest"
        data = json.loads((latest / "audit.json").read_text())
        jsonschema.validate(data, load_schema())
        ft = {c["id"]: c for c in data["checks"] if c["audit"] == "finetune"}
        assert set(ft) == {
            "finetune.direction_cosine",
            "finetune.direction_transfer",
            "finetune.refusal_drop",
        }
        assert ft["finetune.direction_cosine"]["value"] == pytest.approx(1.0)  # same checkpoint
        assert ft["finetune.refusal_drop"]["value"] == pytest.approx(0.0)
        assert data["baseline"]["kind"] == ("audit" if baseline.endswith(".json") else "model")
        assert data["deltas"]
    # The refusal drop alone reads the two checkpoints' behaviour, not the direction comparison.
    r = pytester.runpytest(*real_args(planted), "-m", "finetune", "-k", "refusal_drop",
                           "--baseline", str(run / "audit.json"))  # fmt: skip
    assert r.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    data = json.loads((pytester.path / "reports" / "model" / "latest" / "audit.json").read_text())
    assert [c["id"] for c in data["checks"]] == ["finetune.refusal_drop"] and data["deltas"]
    assert "finetune" not in data["run"]["phases"]
    shutil.rmtree(pytester.path / "reports")


def test_a_model_that_never_refuses_still_gets_a_direction(
    pytester: pytest.Pytester, env: dict[str, Path], planted: dict[str, Path]
) -> None:
    # A random tiny model refuses nothing, so the reference filter keeps no harmful prompt; the
    # direction is then fit on all prompts, and the report says so.
    args = real_args(planted)
    args[args.index("--model") + 1] = str(env["model"])
    args[args.index("--cache-dir") + 1] = str(env["cache"])
    r = pytester.runpytest(*args, "-m", "representation")
    assert r.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    data = only_record(pytester)
    assert [c["id"] for c in data["checks"]] == ["representation.separation_auroc"]
    assert any("fit and selected on all prompts" in x for x in data["limitations"])
