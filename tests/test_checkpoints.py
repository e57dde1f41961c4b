"""Auditing a series of checkpoints: ``--model`` given several times, ``--models-file``.

The inner runs judge synthetic estimates on tiny random models, so each takes a few seconds; an
inner conftest logs every model load and prompt-set load, which is how "each checkpoint is
loaded once" and "the prompts and the baseline are shared" are checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from planted import write_fixtures
from test_plugin import POLICY  # the same demo policy as the single-model plugin tests

from refusal_probe.audit.checkpoints import read_models_file, resolve_checkpoints
from refusal_probe.errors import OptionError
from refusal_probe.model.loading import LoadOptions, load_model
from refusal_probe.testing import make_tiny_model

# Counts loads in the inner run (and undoes the patch, since in-process runs share modules).
CONFTEST = """
import os

import refusal_probe.model.loading as models
import refusal_probe.prompts.sets as prompts

pytest_plugins = ["refusal_probe.pytest_plugin.plugin"]
LOG = os.environ["LOAD_LOG"]
_ORIGINAL = (models.load_model, prompts.load_fixtures)


def _logged(kind, fn):
    def wrapper(*args, **kwargs):
        with open(LOG, "a") as fh:
            fh.write(f"{kind} {os.path.basename(str(args[0])) if args else '-'}\\n")
        return fn(*args, **kwargs)

    return wrapper


def pytest_configure(config):
    models.load_model = _logged("model", _ORIGINAL[0])
    prompts.load_fixtures = _logged("prompts", _ORIGINAL[1])


def pytest_unconfigure(config):
    models.load_model, prompts.load_fixtures = _ORIGINAL
"""

# The rate passes on checkpoint "tiny-a" and fails on "tiny-b": a trend with a regression.
SERIES = '''
import pytest
from refusal_probe.stats.intervals import Interval


@pytest.mark.behaviour
def test_rate(audit, findings, checkpoint):
    """Synthetic refusal rate."""
    assert findings.model.identity.spec == checkpoint and findings.fixtures.harmful
    v = 0.97 if checkpoint.endswith("tiny-a") else 0.5
    audit.check("demo.rate", Interval(v, v - 0.03, v + 0.02, n=100, method="wilson"))


@pytest.mark.causal
def test_cost(audit, findings):
    """Synthetic KL cost."""
    assert findings.model.n_layers == 3
    audit.check("demo.cost", Interval(0.02, 0.01, 0.03, n=50, method="bootstrap"))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny checkpoints, a broken one, a baseline, the planted prompts; built once."""
    root = tmp_path_factory.mktemp("series")
    a = make_tiny_model(root / "tiny-a", "llama")
    broken = root / "tiny-broken"
    shutil.copytree(a, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    # In-process pytester runs drop the modules they imported; some (datasets, via the bridge)
    # cannot be imported twice. Loading once here keeps them imported for every inner run.
    load_model(str(a), LoadOptions(cache_dir=str(root / "cache")))
    return {
        "root": root,
        "a": a,
        "b": make_tiny_model(root / "tiny-b", "llama"),
        "base": make_tiny_model(root / "tiny-base", "llama"),
        "broken": broken,
        "prompts": write_fixtures(root / "prompts"),
        "cache": root / "cache",
    }


def project(
    pytester: pytest.Pytester,
    env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    audits: str = SERIES,
) -> list[str]:
    """Write the inner conftest, policy and audit file; return the common options."""
    monkeypatch.setenv("LOAD_LOG", str(pytester.path / "loads.log"))
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".toml", policy=POLICY)
    pytester.makepyfile(test_series=audits)
    return [
        "-p", "no:cacheprovider",
        "--prompts", str(env["prompts"]),
        "--cache-dir", str(env["cache"]),
        "--policy", "policy.toml",
        "--report-dir", "reports",
    ]


def loads(pytester: pytest.Pytester) -> list[str]:
    log = pytester.path / "loads.log"
    return log.read_text().splitlines() if log.is_file() else []


def record_of(folder: Path) -> dict:
    return json.loads((folder / "latest" / "audit.json").read_text())


# --- the series run ---------------------------------------------------------------------------


def test_a_series_runs_each_checkpoint_once_with_a_report_each_and_a_trend(
    pytester: pytest.Pytester, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = project(pytester, env, monkeypatch)
    (env["root"] / "more.txt").write_text("# the later checkpoint\n\ntiny-b  # relative\n")
    r = pytester.runpytest(
        *args, "--model", str(env["a"]), "--models-file", str(env["root"] / "more.txt"), "-v"
    )
    r.assert_outcomes(passed=3, failed=1)
    # Node ids name the checkpoint, and one checkpoint's tests run together. (A test's line is
    # written again after the progress lines its test wrote: only the outcome lines count.)
    ran = [
        ln.split(" ")[0]
        for ln in r.stdout.lines
        if ln.startswith("test_series.py::") and ("PASSED" in ln or "FAILED" in ln)
    ]
    assert ran == [
        "test_series.py::test_rate[tiny-a]",
        "test_series.py::test_cost[tiny-a]",
        "test_series.py::test_rate[tiny-b]",
        "test_series.py::test_cost[tiny-b]",
    ]
    # Each model is loaded once; the prompt sets once for the whole series.
    assert loads(pytester) == ["prompts prompts", "model tiny-a", "model tiny-b"]
    reports = pytester.path / "reports"
    a, b = record_of(reports / "tiny-a"), record_of(reports / "tiny-b")
    assert a["model"]["spec"] == str(env["a"]) and b["model"]["spec"] == str(env["b"])
    assert a["model"]["architecture"] == "LlamaForCausalLM"
    assert [c["verdict"] for c in a["checks"]] == ["pass", "pass"]
    assert {c["id"]: c["verdict"] for c in b["checks"]}["demo.rate"] == "fail"
    assert a["config"]["options"]["model"] == str(env["a"])
    trend = json.loads((reports / "trend" / "latest" / "trend.json").read_text())
    assert [c["label"] for c in trend["checkpoints"]] == ["tiny-a", "tiny-b"]
    assert [c["run_id"] for c in trend["checkpoints"]] == [a["run"]["id"], b["run"]["id"]]
    rate = next(c for c in trend["checks"] if c["id"] == "demo.rate")
    assert [p["verdict"] for p in rate["points"]] == ["pass", "fail"]
    assert [p["value"] for p in rate["points"]] == [0.97, 0.5]
    page = (reports / "trend" / "latest" / "index.html").read_text()
    assert 'data-checkpoint="tiny-b" data-verdict="fail"' in page and "<svg" in page
    r.stdout.fnmatch_lines(["*tiny-a (*", "*report: *tiny-a*index.html", "trend: *index.html"])


def test_one_model_is_not_a_series(
    pytester: pytest.Pytester, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = project(pytester, env, monkeypatch)
    (pytester.path / "one.txt").write_text(f"{env['a']}\n")
    r = pytester.runpytest(*args, "--models-file", "one.txt", "-v")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["test_series.py::test_rate PASSED*"])  # no [checkpoint] in the id
    assert not (pytester.path / "reports" / "trend").exists()
    assert record_of(pytester.path / "reports" / "tiny-a")["model"]["spec"] == str(env["a"])


def test_the_baseline_is_opened_once_and_a_broken_checkpoint_fails_alone(
    pytester: pytest.Pytester, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = '''

@pytest.mark.finetune
def test_against_baseline(audit, findings, baseline):
    """Synthetic fine-tune figure."""
    assert baseline.run.model.identity.spec.endswith("tiny-base")
    audit.check("demo.cost", Interval(0.02, 0.01, 0.03, n=50, method="bootstrap"))
'''
    args = project(pytester, env, monkeypatch, SERIES + extra)
    r = pytester.runpytest(
        *args,
        "--model", str(env["a"]),
        "--model", str(env["broken"]),
        "--model", str(env["b"]),
        "--baseline", str(env["base"]),
        "-k", "not rate",
    )
    # The broken checkpoint errors its own tests only; the others run against one baseline.
    r.assert_outcomes(passed=4, failed=1, errors=1, deselected=3)
    assert loads(pytester).count("model tiny-base") == 1
    assert loads(pytester).count("model tiny-broken") == 1  # a failed load is not retried
    reports = pytester.path / "reports"
    assert not (reports / "tiny-broken").exists()
    assert record_of(reports / "tiny-b")["baseline"]["spec"] == str(env["base"])
    trend = json.loads((reports / "trend" / "latest" / "trend.json").read_text())
    broken = trend["checkpoints"][1]
    assert (broken["label"], broken["status"]) == ("tiny-broken", "missing")
    assert "damaged" in broken["reason"]


def test_under_xdist_loadgroup_each_checkpoint_loads_once(
    pytester: pytest.Pytester, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    args = project(pytester, env, monkeypatch)
    r = pytester.runpytest_subprocess(
        *args, "--model", str(env["a"]), "--model", str(env["b"]), "-n", "2", "--dist", "loadgroup"
    )
    r.assert_outcomes(passed=3, failed=1)
    models = sorted(ln for ln in loads(pytester) if ln.startswith("model"))
    assert models == ["model tiny-a", "model tiny-b"]  # one worker per checkpoint
    trend = json.loads((pytester.path / "reports" / "trend" / "latest" / "trend.json").read_text())
    assert [c["status"] for c in trend["checkpoints"]] == ["complete", "complete"]


# --- bad input ----------------------------------------------------------------------------------


def test_a_bad_models_file_is_a_usage_error_naming_file_and_line(
    pytester: pytest.Pytester, env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = project(pytester, env, monkeypatch)
    bad = pytester.path / "models.txt"
    bad.write_text(f"# series\n{env['a']}\n\nno/such/checkpoint/here\n")
    r = pytester.runpytest(*args, "--models-file", str(bad))
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{bad}:4: no/such/checkpoint/here:" in r.stdout.str() + r.stderr.str()
    bad.write_text(f"{env['a']}\n{env['a']}/\n")
    r = pytester.runpytest(*args, "--models-file", str(bad))
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{bad}:2: checkpoint '{env['a']}/' is already given at {bad}:1" in r.stderr.str()
    r = pytester.runpytest(*args, "--models-file", "missing.txt")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "no such file" in r.stderr.str()
    r = pytester.runpytest(*args, "--device", "cpu", "--device-map", "auto")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "pass one of the two" in r.stderr.str()
    assert loads(pytester) == [] and not (pytester.path / "reports").exists()


def test_models_files_skip_comments_and_read_paths_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "ck-1").mkdir()
    f = tmp_path / "m.txt"
    f.write_text("# header\n  ck-1   # beside the file\n\norganism-chat\nkeep#this\n")
    assert read_models_file(f) == [
        (str(tmp_path / "ck-1"), f"{f}:2:"),
        ("organism-chat", f"{f}:4:"),
        ("keep#this", f"{f}:5:"),  # a # inside a spec is not a comment
    ]
    f.write_text("# nothing\n\n")
    with pytest.raises(OptionError, match=r"lists no checkpoint"):
        read_models_file(f)
    cps = resolve_checkpoints(["runs/a/ck", "runs/b/ck"], None, "organism-chat")
    assert [(c.label, c.origin) for c in cps] == [("a-ck", "--model"), ("b-ck", "--model")]
    assert [c.spec for c in resolve_checkpoints(None, None, "organism-chat")] == ["organism-chat"]
    with pytest.raises(OptionError, match="already given at --model"):
        resolve_checkpoints(["organism-chat", "organism-chat"], None, "x")


@pytest.mark.parametrize(
    ("nodeid", "label"),
    [
        ("audits/test_behaviour.py::test_harmful_refusal[ck-2]", "ck-2"),
        ("audits/test_behaviour.py::test_harmful_refusal[ck]", "ck"),
        ("audits/test_x.py::test_y[ck-2-7]", "ck-2"),  # another parameter after the checkpoint
        ("audits/test_x.py::test_y[7-ck]", "ck"),
        ("audits/test_x.py::test_y[ck-2]@ck-2", "ck-2"),  # xdist's suffix, where it works
        ("audits/test_x.py::test_y", None),
        ("audits/test_x.py::test_y[other]", None),
    ],
)
def test_xdist_groups_tests_by_the_checkpoint_in_their_id(nodeid: str, label: str | None) -> None:
    pytest.importorskip("xdist")
    from refusal_probe.pytest_plugin.xdist import checkpoint_label

    assert checkpoint_label(nodeid, ["ck", "ck-2"]) == label


# --- the real audit suite on a series -----------------------------------------------------------


def test_the_real_audits_on_a_series_of_planted_checkpoints(
    pytester: pytest.Pytester,
    env: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from planted import make_planted_model

    root = Path(__file__).resolve().parents[1]
    # A "fine-tune" that weakens the planted refusal direction, checkpoint by checkpoint.
    strong, _ = make_planted_model(tmp_path / "ck-0", c=6.0)
    weak, _ = make_planted_model(tmp_path / "ck-1", c=0.5)
    # The suite's own conftest registers the plugin; the load log comes in as a plugin module.
    monkeypatch.setenv("LOAD_LOG", str(pytester.path / "loads.log"))
    pytester.makepyfile(loadlog=CONFTEST.replace("pytest_plugins", "_unused"))
    pytester.syspathinsert()
    r = pytester.runpytest(
        str(root / "audits"),
        "-p", "loadlog",
        "-p", "no:cacheprovider",
        "--model", str(strong),
        "--model", str(weak),
        "--baseline", str(strong),
        "--prompts", str(env["prompts"]),
        "--cache-dir", str(tmp_path / "cache"),
        "--report-dir", "reports",
    )
    assert r.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    reports = pytester.path / "reports"
    trend = json.loads((reports / "trend" / "latest" / "trend.json").read_text())
    assert [c["label"] for c in trend["checkpoints"]] == ["ck-0", "ck-1"]
    values = {c["id"]: [p["value"] for p in c["points"]] for c in trend["checks"]}
    assert {"behaviour.harmful_refusal", "causal.ablation_drop", "finetune.refusal_drop"} <= set(
        values
    )
    # Both share the planted direction; the first is its own baseline.
    assert values["finetune.direction_cosine"] == pytest.approx([1.0, 1.0])
    assert values["representation.separation_auroc"] == pytest.approx([1.0, 1.0])
    for label in ("ck-0", "ck-1"):
        assert record_of(reports / label)["baseline"]["spec"] == str(strong)
    # The baseline is the first checkpoint: loaded once for both roles.
    assert [ln for ln in loads(pytester) if ln.startswith("model")] == ["model ck-0", "model ck-1"]
