"""Verdicts, the policy, the audit record and its schema, plots, rendering, compare, the CLI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import tomllib
from hypothesis import given
from hypothesis import strategies as st

from refusal_probe.__main__ import main
from refusal_probe.audit.policy import DEFAULT_POLICY, load_policy
from refusal_probe.errors import PolicyError, ReportError
from refusal_probe.report import (
    AuditRecord,
    CheckRecord,
    Figure,
    NotRun,
    compare_files,
    compare_records,
    load_schema,
    model_slug,
    read_record,
    write_report,
)
from refusal_probe.report import render as render_module
from refusal_probe.report.plots import render_figure
from refusal_probe.stats.intervals import Bootstrap, Interval, bootstrap_mean, wilson_interval
from refusal_probe.stats.verdicts import Bound, Threshold, Verdict, decide

ROOT = Path(__file__).resolve().parents[1]


# --- verdicts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "direction", "want"),
    [
        (0.92, 0.99, "at_least", Verdict.PASS),
        (0.90, 0.99, "at_least", Verdict.PASS),  # the bound may touch the bar
        (0.70, 0.89, "at_least", Verdict.FAIL),
        (0.85, 0.95, "at_least", Verdict.INCONCLUSIVE),
        (0.01, 0.08, "at_most", Verdict.PASS),
        (0.12, 0.20, "at_most", Verdict.FAIL),
        (0.05, 0.15, "at_most", Verdict.INCONCLUSIVE),
    ],
)
def test_judge_compares_the_interval_not_the_point(
    lo: float, hi: float, direction: str, want: Verdict
) -> None:
    t = Threshold(0.9 if direction == "at_least" else 0.1, direction)  # type: ignore[arg-type]
    est = Interval((lo + hi) / 2, lo, hi)
    assert decide(est, t).verdict is want


def test_strict_turns_inconclusive_into_failure_only() -> None:
    t = Threshold(0.9, "at_least")
    j = decide(Interval(0.91, 0.85, 0.95), t, strict=True)
    assert (j.verdict, j.raw) == (Verdict.FAIL, Verdict.INCONCLUSIVE)
    assert "under --strict" in j.message
    assert decide(Interval(0.95, 0.92, 0.99), t, strict=True).verdict is Verdict.PASS


def test_a_point_above_the_bar_with_a_wide_interval_is_not_a_pass() -> None:
    assert (
        decide(Interval(0.95, 0.5, 1.0, n=4), Threshold(0.9, "at_least")).verdict
        is Verdict.INCONCLUSIVE
    )


def test_not_a_number_is_never_a_pass() -> None:
    nan = float("nan")
    j = decide(Interval(nan, nan, nan), Threshold(0.9, "at_least"))
    assert j.verdict is Verdict.INCONCLUSIVE and "not a finite number" in j.message
    assert (
        decide(Interval(nan, nan, nan), Threshold(0.9, "at_least"), strict=True).verdict
        is Verdict.FAIL
    )


def test_failure_message_says_by_how_much() -> None:
    j = decide(Interval(0.2, 0.1, 0.3), Threshold(0.9, "at_least"), name="harmful refusal rate")
    assert j.message.startswith("harmful refusal rate 0.200 [0.100, 0.300] is below the bar")
    assert "misses it by 0.6" in j.message and j.margin == pytest.approx(-0.6)


@given(lo=st.floats(-1, 1), width=st.floats(0, 1), t=st.floats(-1, 1), at_least=st.booleans())
def test_verdicts_agree_with_where_the_interval_lies(
    lo: float, width: float, t: float, at_least: bool
) -> None:
    hi = lo + width
    thr = Threshold(t, "at_least" if at_least else "at_most")
    v = decide(Interval(lo + width / 2, lo, hi), thr).verdict
    good_side = lo >= t if at_least else hi <= t
    bad_side = hi < t if at_least else lo > t
    assert (v is Verdict.PASS) == good_side
    assert (v is Verdict.FAIL) == bad_side
    assert (v is Verdict.INCONCLUSIVE) == (not good_side and not bad_side)


def test_the_engine_intervals_are_judged_directly() -> None:
    r = wilson_interval(45, 50)
    assert (r.n, r.k, r.method) == (50, 45, "wilson") and r.low < 0.9 < r.high
    assert decide(r, Threshold(0.9, Bound.AT_LEAST)).verdict is Verdict.INCONCLUSIVE
    i = bootstrap_mean(np.linspace(0.4, 0.6, 20), Bootstrap(1000))
    assert i.method == "bootstrap percentile (1000 resamples)" and i.n == 20  # the sample size
    assert i.n_resamples == 1000
    assert decide(i, Threshold(0.9, Bound.AT_LEAST)).verdict is Verdict.FAIL


# --- the policy ---------------------------------------------------------------------------------


def test_the_shipped_policy_covers_every_audit_check() -> None:
    policy = load_policy(ROOT / "audits" / "policy.toml")
    used = set()
    for f in (ROOT / "audits").glob("test_*.py"):
        used |= set(re.findall(r'audit\.check\(\s*"([a-z_]+\.[a-z_]+)"', f.read_text()))
    assert used and used <= set(policy.checks), used - set(policy.checks)
    for c in policy.checks.values():
        assert c.rationale and "\n" not in c.rationale


def test_the_fast_policy_keeps_the_bars_and_narrows_selection() -> None:
    """audits/policy-fast.toml differs from policy.toml only in its selection settings."""
    full, fast = (
        load_policy(ROOT / "audits" / name) for name in ("policy.toml", "policy-fast.toml")
    )
    assert fast.checks == full.checks
    assert (fast.settings.selection_prompts, fast.settings.selection_layer_stride) == (16, 2)
    assert fast.settings.selection_positions == 1
    assert (full.settings.selection_prompts, full.settings.selection_layer_stride) == (32, 1)
    assert full.settings.selection_positions == 0  # every post-instruction position
    assert full.settings.selection_screen == 16  # screened by attribution, the best 16 scored


def test_the_fast_policy_is_an_overlay_naming_only_selection_settings() -> None:
    raw = tomllib.loads((ROOT / "audits" / "policy-fast.toml").read_text())
    assert raw.pop("extends") == "policy.toml"
    assert set(raw) == {"settings"} and all(k.startswith("selection_") for k in raw["settings"])
    fast = load_policy(ROOT / "audits" / "policy-fast.toml")
    assert fast.files == (
        str(ROOT / "audits" / "policy.toml"),
        str(ROOT / "audits" / "policy-fast.toml"),
    )


def test_the_shipped_policy_names_its_audits_in_order() -> None:
    policy = load_policy(ROOT / "audits" / "policy.toml")
    assert policy.audit_names == (
        "behaviour",
        "representation",
        "causal",
        "finetune",
        "localization",
        "monitor",
    )
    assert all(a.description and "\n" not in a.description for a in policy.audits)
    assert {c.audit for c in policy.checks.values()} == set(policy.audit_names)
    assert policy.to_dict()["audits"][0] == {
        "name": "behaviour",
        "description": policy.audits[0].description,
    }


def test_an_overlay_changes_only_what_it_names(tmp_path: Path) -> None:
    base = write_policy(
        tmp_path,
        '[settings]\nresamples = 500\n\n[b]\ndescription = "bee"\n\n'
        '[b.x]\nat_least = 0.9\nunit = "probability"\nrationale = "r"\n\n'
        '[b.y]\nat_most = 0.1\nunit = "nats"\nrationale = "r"\n',
    )
    (tmp_path / "sub").mkdir()
    over = tmp_path / "sub" / "over.toml"
    over.write_text(
        'extends = "../policy.toml"\n[settings]\nconfidence = 0.9\n'
        "[b.x]\nat_most = 0.5\n[b.y]\nenabled = false\n"
        '[a]\ndescription = "ay"\n[a.z]\nat_least = 0.0\nunit = "cosine"\nrationale = "new"\n'
    )
    policy = load_policy(over)
    assert (policy.settings.resamples, policy.settings.confidence) == (500, 0.9)
    assert policy.check("b.x").threshold == Threshold(0.5, "at_most")  # the bar changed sides
    assert policy.check("b.x").rationale == "r" and not policy.check("b.y").enabled
    assert policy.audit_names == ("b", "a") and policy.audits[1].description == "ay"
    assert policy.path == str(over) and policy.files == (str(base), str(over))
    assert policy.sha256 != load_policy(base).sha256
    base.write_text(base.read_text().replace("500", "600"))  # the base is part of the hash
    assert load_policy(over).sha256 != policy.sha256


def test_an_overlay_of_the_default_policy(tmp_path: Path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text('extends = "default"\n[behaviour.harmful_refusal]\nat_least = 0.95\n')
    policy = load_policy(p)
    shipped = load_policy(DEFAULT_POLICY)
    assert policy.check("behaviour.harmful_refusal").threshold == Threshold(0.95, "at_least")
    assert policy.audit_names == shipped.audit_names
    assert set(policy.checks) == set(shipped.checks)


def test_overlay_errors_name_the_file_that_gave_the_key(tmp_path: Path) -> None:
    base = write_policy(tmp_path, '[a.b]\nat_least = 0.9\nunit = "probability"\nrationale = "r"\n')
    over = tmp_path / "over.toml"
    over.write_text('extends = "policy.toml"\n[a.b]\nat_least = 2\n[a.c]\nunit = "nats"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(over)
    lines = str(info.value).splitlines()
    assert any(line.strip().startswith(f"{over}: [a.b] at_least: 2 is outside") for line in lines)
    assert any(line.strip().startswith(f"{over}: [a.c] rationale: missing") for line in lines)
    over.write_text('extends = "policy.toml"\n[a]\ndescription = 3\n')
    with pytest.raises(PolicyError, match=r"\[a\] description: must be one line of text"):
        load_policy(over)
    base.write_text('version = 1\nextends = "over.toml"\n')
    over.write_text('extends = "policy.toml"\n')
    with pytest.raises(PolicyError, match="leads back to"):
        load_policy(over)
    over.write_text('extends = "nowhere.toml"\n')
    with pytest.raises(
        PolicyError, match=re.escape(f"{over}: extends: policy file ") + ".*nowhere.toml does not"
    ):
        load_policy(over)
    over.write_text("extends = 3\n")
    with pytest.raises(PolicyError, match="extends: must be a file name"):
        load_policy(over)


def write_policy(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text("version = 1\n" + body)
    return p


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[a.b]\nat_least = 0.9\nunit = "probability"\nrationale = "r"\nextra = 1\n',
            r"\[a.b\] extra: unknown key",
        ),
        (
            '[a.b]\nat_least = true\nunit = "probability"\nrationale = "r"\n',
            "must be a finite number",
        ),
        (
            '[a.b]\nat_least = 0.9\nat_most = 0.1\nunit = "probability"\nrationale = "r"\n',
            "exactly one of",
        ),
        (
            '[a.b]\nat_least = 0.9\nunit = "percent"\nrationale = "r"\n',
            "unit: 'percent' is not one of",
        ),
        (
            '[a.b]\nat_most = -1\nunit = "nats"\nrationale = "r"\n',
            "outside the range of unit 'nats'",
        ),
        (
            '[a.b]\nat_least = 0.9\nunit = "probability"\nrationale = ""\n',
            "rationale: missing or empty",
        ),
        (
            '[a.b]\nat_least = 0.9\nunit = "probability"\nrationale = "r"\nenabled = "yes"\n',
            "enabled: must be true or false",
        ),
        ("[settings]\nresamples = 10\n", r"resamples: 10 is outside \[100, 100000\]"),
        ('[settings]\nconfidence = "high"\n', "confidence: must be a number"),
        ("[settings]\nseed = 3\n", "seed: unknown key"),
        (
            "[settings]\nselection_layer_stride = 0\n",
            r"selection_layer_stride: 0 is outside \[1, 64\]",
        ),
        (
            "[settings]\nmonitor_target_fpr = 0.7\n",
            r"monitor_target_fpr: 0.7 is outside \[0.001, 0.5\]",
        ),
        ("[settings]\nselection_screen = -1\n", r"selection_screen: -1 is outside \[0, 100000\]"),
        ("stray = 1\n", "stray: unknown key"),
        ('[settings]\nsequential = "yes"\n', "sequential: must be true or false"),
        ("[settings]\nsequential_round = 0\n", r"sequential_round: 0 is outside \[1, 100000\]"),
    ],
)
def test_bad_policies_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        load_policy(write_policy(tmp_path, body))
    assert str(tmp_path / "policy.toml") in str(info.value)


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(write_policy(tmp_path, "[a.b\n"))
    with pytest.raises(PolicyError, match="version: must be 1"):
        (tmp_path / "v.toml").write_text("version = 2\n")
        load_policy(tmp_path / "v.toml")
    policy = load_policy(
        write_policy(tmp_path, '[a.b]\nat_most = 0.1\nunit = "nats"\nrationale = "r"\n')
    )
    with pytest.raises(PolicyError, match=r"no section \[a.c\]"):
        policy.check("a.c")
    assert policy.check("a.b").threshold == Threshold(0.1, "at_most")


# --- the record, its schema and the report ------------------------------------------------------


def check(
    cid: str = "behaviour.harmful_refusal", verdict: str = "pass", value: float = 0.97
) -> CheckRecord:
    fig = Figure(
        "bars",
        "rates <&>",
        {
            "labels": ["harmful"],
            "series": [
                {
                    "name": "r",
                    "values": [value],
                    "lo": [value - 0.05],
                    "hi": [min(1.0, value + 0.02)],
                }
            ],
            "threshold": 0.9,
        },
    )
    return CheckRecord(
        cid,
        cid.split(".")[0],
        "Harmful refusal",
        verdict,
        f"{verdict} message",
        value,
        value - 0.05,
        min(1.0, value + 0.02),
        0.95,
        "wilson",
        100,
        0.9,
        "at_least",
        "probability",
        "why",
        "audits/x.py::t",
        verdict,
        1.0,
        (fig,),
        {"k": 97},
    )


def record(
    status: str = "complete",
    checks: tuple[CheckRecord, ...] | None = None,
    run_id: str = "20250101T000000Z-abcdef",
    spec: str = "organism-chat",
    policy_sha: str = "0" * 64,
) -> AuditRecord:
    run = {
        "id": run_id,
        "started_utc": "2025-01-01T00:00:00Z",
        "finished_utc": "2025-01-01T00:01:00Z",
        "duration_s": 60.0,
        "user": "u",
        "host": "h",
        "command": "pytest audits/",
        "tool_version": "0.1.0",
        "git_commit": None,
        "packages": {"torch": "2"},
        "hardware": {"cpu_count": 2},
        "seed": 0,
        "strict": False,
        "exit_status": 0,
    }
    model = {
        "spec": spec,
        "weights_sha256": "a" * 64,
        "architecture": "LlamaForCausalLM",
        "n_layers": 4,
        "d_model": 64,
        "fingerprint": "f" * 16,
    }
    config = {
        "options": {"model": spec},
        "policy": {"path": "p", "sha256": policy_sha, "version": 1, "settings": {}, "checks": {}},
        "sha256": "1" * 64,
    }
    return AuditRecord(
        status,
        run,
        model,
        None,
        config,
        {"harmful": {"test": 10}, "sha256": {"harmful.jsonl": "x"}},
        checks if checks is not None else (check(),),
        (NotRun("finetune.direction_cosine", "finetune", "no --baseline", "skipped"),),
        (),
        ("a limitation",),
    )


def test_a_record_matches_its_schema_and_round_trips() -> None:
    r = record(checks=(check(), replace(check("causal.ablation_kl"), value=math.nan)))
    data = r.to_dict()
    jsonschema.validate(data, load_schema())
    assert data["checks"][1]["value"] is None  # NaN is not JSON
    back = AuditRecord.from_dict(json.loads(json.dumps(data)))
    assert back.checks[0] == r.checks[0] and back.summary() == r.summary()


def test_summary_is_the_worst_verdict() -> None:
    assert (
        record(checks=(check(), check("b.c", "inconclusive"))).summary()["verdict"]
        == "inconclusive"
    )
    assert record(checks=(check(), check("b.c", "fail"))).summary()["verdict"] == "fail"
    errored = replace(record(), not_run=(NotRun("a.b", "a", "error in call: boom", "error"),))
    assert errored.summary()["verdict"] == "fail"


def test_the_report_folder_is_written_whole(tmp_path: Path) -> None:
    run = write_report(record(), tmp_path)
    assert run == tmp_path / "organism-chat" / "20250101T000000Z-abcdef"
    assert read_record(run / "audit.json").checks[0].id == "behaviour.harmful_refusal"
    html = (run / "index.html").read_text()
    assert 'data-check-id="behaviour.harmful_refusal"' in html and "<svg" in html
    assert "rates &lt;&amp;&gt;" in html  # escaped
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no external resources"
    assert (tmp_path / "organism-chat" / "latest").resolve() == run.resolve()
    second = write_report(record(run_id="20250102T000000Z-abcdef"), tmp_path)
    assert (tmp_path / "organism-chat" / "latest").resolve() == second.resolve()
    interrupted = write_report(record("interrupted", run_id="20250103T000000Z-abcdef"), tmp_path)
    assert "INCOMPLETE" in (interrupted / "index.html").read_text()
    assert (tmp_path / "organism-chat" / "latest").resolve() == second.resolve()  # not moved


def test_an_interrupted_run_has_no_overall_pass() -> None:
    assert record().summary()["verdict"] == "pass"
    assert record("interrupted").summary()["verdict"] == "incomplete"
    failed = (replace(check(), verdict="fail"),)
    assert record("interrupted", checks=failed).summary()["verdict"] == "fail"


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = record(checks=(replace(check(), verdict="great"),))
    with pytest.raises(ReportError, match="does not match the audit.json schema"):
        write_report(bad, tmp_path)
    assert not any(tmp_path.rglob("*"))

    def boom(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(render_module.shutil, "copyfile", boom)
    (tmp_path / "artifact.bin").write_bytes(b"x")
    with pytest.raises(ReportError, match="disk full"):
        write_report(record(), tmp_path, {"artifact.bin": tmp_path / "artifact.bin"})
    assert [p.name for p in (tmp_path / "organism-chat").iterdir()] == []


def test_reading_records_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="does not exist"):
        read_record(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        read_record(tmp_path / "a.json")
    data = record().to_dict()
    del data["run"]["id"]
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"at \$\.run: 'id' is a required property"):
        read_record(tmp_path / "b.json")
    data = record().to_dict() | {"schema_version": "2.0"}
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="schema version '2.0' is not readable"):
        read_record(tmp_path / "c.json")


@pytest.mark.parametrize(
    ("spec", "slug"),
    [
        ("organism-chat", "organism-chat"),
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
        ("HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M"),
        ("./my model/", "my-model"),
    ],
)
def test_model_slugs(spec: str, slug: str) -> None:
    assert model_slug(spec) == slug


# --- plots --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fig",
    [
        Figure(
            "line",
            "l",
            {
                "x": [0, 1, 2],
                "series": [
                    {
                        "name": "a",
                        "y": [0.5, None, float("nan")],
                        "lo": [0.4, 0, 0],
                        "hi": [0.6, 1, 1],
                    },
                    {"name": "b", "y": [1, 2, 3]},
                ],
                "threshold": 0.9,
                "mark_x": 1,
                "y_range": [0, 1],
            },
        ),
        Figure("line", "single point", {"x": [3], "series": [{"name": "a", "y": [0.7]}]}),
        Figure("line", "empty", {"x": [], "series": []}),
        Figure(
            "heatmap",
            "h",
            {
                "values": [[1.0, None], [-2.0, 0.5]],
                "x_labels": ["-2", "-1"],
                "y_labels": ["0", "1"],
                "mark": [1, 0],
                "diverging": True,
                "value_label": "effect",
            },
        ),
        Figure("heatmap", "constant", {"values": [[0.0, 0.0]]}),
        Figure(
            "bars",
            "b",
            {
                "labels": ["x", "y"],
                "series": [
                    {"name": "s", "values": [0.2, None], "lo": [0.1, None], "hi": [0.3, None]}
                ],
                "threshold": 0.5,
            },
        ),
    ],
)
def test_plots_are_well_formed_svg(fig: Figure) -> None:
    svg = render_figure(fig)
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.find("{http://www.w3.org/2000/svg}title").text == fig.title  # type: ignore[union-attr]


def test_the_heatmap_draws_every_cell_and_the_mark() -> None:
    svg = render_figure(
        Figure("heatmap", "h", {"values": [[1, 2, 3], [4, None, 6]], "mark": [0, 2]})
    )
    root = ET.fromstring(svg)
    rects = [
        r
        for r in root.iter("{http://www.w3.org/2000/svg}rect")
        if r.find("{http://www.w3.org/2000/svg}title") is not None
    ]
    assert len(rects) == 6 and "filtered / n/a" in svg and 'class="mark"' in svg


# --- compare and the command line ---------------------------------------------------------------


def test_compare_pairs_checks_and_notes_what_differs(tmp_path: Path) -> None:
    a = record(checks=(check(), check("causal.ablation_kl")))
    b = record(
        checks=(check(verdict="fail", value=0.3), check("finetune.refusal_drop")),
        spec="organism-chat-ft",
        run_id="20250102T000000Z-abcdef",
        policy_sha="9" * 64,
    )
    cmp = compare_records(a, b)
    assert cmp.counts() == {"worse": 1, "better": 0, "same": 0, "only_a": 1, "only_b": 1}
    assert cmp.pairs[0].delta == pytest.approx(0.3 - 0.97)
    assert any("different policy files" in n for n in cmp.notes)
    pa, pb = write_report(a, tmp_path), write_report(b, tmp_path)
    out = compare_files(pa / "audit.json", pb / "audit.json", tmp_path / "cmp.html")
    html = out.read_text()
    assert 'data-check-id="behaviour.harmful_refusal" data-change="worse"' in html
    assert "1 checks worse" in html


def test_cli_compare_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa = write_report(record(), tmp_path)
    pb = write_report(record(run_id="20250102T000000Z-abcdef"), tmp_path)
    assert main(["compare", str(pa), str(pb), "-o", str(tmp_path / "c.html")]) == 0
    assert "0 worse" in capsys.readouterr().out and (tmp_path / "c.html").is_file()
    (tmp_path / "broken.json").write_text("[")
    assert main(["compare", str(tmp_path / "broken.json"), str(pb)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_info_prints_the_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from refusal_probe.testing import make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny", "llama")
    assert main(["info", "--model", str(folder), "--json", "--cache-dir", str(tmp_path / "c")]) == 0
    ident = json.loads(capsys.readouterr().out)
    assert ident["architecture"] == "LlamaForCausalLM" and len(ident["weights_sha256"]) == 64
    assert main(["info", "--model", "organism-nope"]) == 2
    assert "ModelLoadError" in capsys.readouterr().err


def test_cli_audit_runs_the_suite_with_pytest(tmp_path: Path) -> None:
    audits = tmp_path / "audits"
    audits.mkdir()
    (audits / "test_plain.py").write_text("def test_ok():\n    assert True\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "refusal_probe",
            "audit",
            "--audits",
            str(audits),
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "refusal_probe", "audit", "--audits", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 4 and "does not exist" in r.stderr


def _representation(separation: list[float], bypass: list[float], layer: int) -> CheckRecord:
    """A representation check with the per-layer figures the audit writes (layers 0-3)."""
    figures = (
        Figure("line", "Separation per layer at position -1 (held-out test split)",
               {"x": [0, 1, 2, 3], "series": [{"name": "difference of means", "y": separation}]}),
        Figure("heatmap", "Selection grid: bypass score of each candidate",
               {"values": [[v] for v in bypass], "x_labels": ["-1"],
                "y_labels": ["0", "1", "2", "3"]}),
    )  # fmt: skip
    base = check("representation.separation_auroc", value=separation[layer])
    details = {"direction": {"layer": layer, "position": -1}}
    return replace(base, figures=figures, details=details)


def test_compare_shows_what_changed_per_layer(tmp_path: Path) -> None:
    """Separation of both runs, their candidates' cosine and bypass, layer by layer."""
    import torch

    from refusal_probe.audit.store import save_direction
    from refusal_probe.direction.estimators import Direction

    a = record(checks=(_representation([0.5, 0.6, 0.7, 0.7], [1.0, 0.5, 0.2, 0.1], 2),))
    b = record(
        checks=(_representation([0.5, 0.8, 0.99, 0.98], [1.0, -2.0, -4.0, -3.0], 2),),
        run_id="20250102T000000Z-abcdef",
    )
    per_layer = {"a": torch.eye(4, 64), "b": torch.eye(4, 64)}
    per_layer["b"][3] = -per_layer["b"][3]  # layer 3 flips; the others agree
    folders = {}
    for name, rec in (("a", a), ("b", b)):
        folders[name] = write_report(rec, tmp_path / name)
        direction = Direction(per_layer[name][2].double(), 2, -1, "diff_means", 8, 8)
        path = folders[name] / "direction.safetensors"
        save_direction(path, direction, per_layer[name], (0, 1, 2, 3))
    cmp = compare_records(a, b, ({0: per_layer["a"][0]}, None))
    assert cmp.layers is not None and [r.cosine for r in cmp.layers.rows] == [None] * 4
    assert any("no direction file" in n for n in cmp.layers.notes)
    out = tmp_path / "c.html"
    assert main(["compare", str(folders["a"]), str(folders["b"]), "-o", str(out)]) == 0
    html = out.read_text()
    assert 'id="per-layer"' in html and html.count("<tr data-layer=") == 4
    cmp = compare_records(
        a, b, tuple({i: v for i, v in enumerate(per_layer[k])} for k in ("a", "b"))
    )
    rows = {r.layer: r for r in cmp.layers.rows}
    assert rows[2].separation_delta == pytest.approx(0.29)
    assert [rows[i].cosine for i in range(4)] == pytest.approx([1.0, 1.0, 1.0, -1.0])
    assert (rows[1].bypass_a, rows[1].bypass_b) == (0.5, -2.0)
    assert cmp.layers.direction_layers == (2, 2)
    plain = compare_records(record(), record())  # no representation check: no per-layer view
    assert plain.layers is None
