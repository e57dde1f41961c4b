"""The trend page of a series of checkpoints: building, notes, the page, the files, the CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from refusal_probe.__main__ import main
from refusal_probe.errors import ReportError
from refusal_probe.report import AuditRecord, CheckRecord, write_report
from refusal_probe.report.plots import line_svg
from refusal_probe.report.render import model_slugs
from refusal_probe.report.trend import SeriesItem, build_trend, trend_files, write_trend


def check(cid: str, value: float, verdict: str, threshold: float = 0.9) -> CheckRecord:
    return CheckRecord(
        cid, cid.split(".")[0], cid.replace(".", " "), verdict, "m", value, value - 0.05,
        value + 0.02, 0.95, "wilson", 100, threshold, "at_least", "probability", "why",
        raw_verdict=verdict,
    )


def record(spec: str, run_id: str, *checks: CheckRecord, prompts: str = "x") -> AuditRecord:
    run = {
        "id": run_id, "started_utc": "2025-01-01T00:00:00Z", "finished_utc": "2025-01-01T00:01:00Z",
        "duration_s": 60.0, "user": "u", "host": "h", "command": "pytest audits/",
        "tool_version": "0.1.0", "git_commit": None, "packages": {}, "hardware": {}, "seed": 0,
        "strict": False, "exit_status": 0,
    }
    model = {
        "spec": spec, "weights_sha256": "a" * 64, "architecture": "LlamaForCausalLM",
        "n_layers": 4, "d_model": 64, "fingerprint": spec[-16:],
    }
    config = {
        "options": {"model": spec},
        "policy": {"path": "p", "sha256": "0" * 64, "version": 1, "settings": {}, "checks": {}},
        "sha256": "1" * 64,
    }
    data = {"sha256": {"harmful.jsonl": prompts}}
    return AuditRecord("complete", run, model, None, config, data, checks)


SERIES = [
    ("runs/ft/checkpoint-0", "20250101T000000Z-000001", 0.97, "pass"),
    ("runs/ft/checkpoint-500", "20250101T000000Z-000002", 0.91, "inconclusive"),
    ("runs/ft/checkpoint-1000", "20250101T000000Z-000003", 0.40, "fail"),
]


def series() -> list[AuditRecord]:
    out = []
    for i, (spec, run_id, v, verdict) in enumerate(SERIES):
        checks = [check("behaviour.harmful_refusal", v, verdict)]
        if i != 1:  # the middle checkpoint did not run the causal check
            checks.insert(0, check("causal.ablation_drop", 0.8 - 0.2 * i, "pass", threshold=0.5))
        out.append(record(spec, run_id, *checks))
    return out


def test_the_trend_lines_up_every_check_in_series_order() -> None:
    recs = series()
    labels = model_slugs([r.model["spec"] for r in recs])
    items = [SeriesItem(lab, r.model["spec"], r) for lab, r in zip(labels, recs, strict=True)]
    trend = build_trend(items)
    assert trend.labels == ["checkpoint-0", "checkpoint-500", "checkpoint-1000"]
    # Audit order (behaviour before causal), whatever order the checks ran in.
    assert [c.id for c in trend.checks] == ["behaviour.harmful_refusal", "causal.ablation_drop"]
    rate, drop = trend.checks
    assert [p.value for p in rate.points] == [0.97, 0.91, 0.40]
    assert [p.verdict for p in rate.points] == ["pass", "inconclusive", "fail"]
    assert [p.verdict for p in drop.points] == ["pass", "not_run", "pass"]
    assert drop.points[1].value is None and drop.threshold == 0.5
    assert [c.verdict for c in trend.checkpoints] == ["pass", "inconclusive", "fail"]
    fig = rate.figure(trend.labels)
    assert fig.data["x_labels"] == trend.labels and fig.data["threshold"] == 0.9
    assert fig.data["series"][0]["lo"] == pytest.approx([0.92, 0.86, 0.35])


def test_the_trend_notes_what_makes_checkpoints_hard_to_compare() -> None:
    a, b = series()[0], series()[2]
    b = record(
        b.model["spec"], b.run["id"], check("behaviour.harmful_refusal", 0.4, "fail", 0.8),
        prompts="other",
    )
    trend = build_trend(
        [
            SeriesItem("a", a.model["spec"], a),
            SeriesItem("b", b.model["spec"], b),
            SeriesItem("c", "runs/broken", None, reason="error in setup: cannot load"),
        ]
    )
    notes = " ".join(trend.notes)
    assert "different prompt sets" in notes
    assert "Different bars along the series for behaviour.harmful_refusal" in notes
    assert "c has no audit record: error in setup: cannot load" in notes
    assert trend.checks[0].threshold is None  # no single bar to draw
    assert trend.checkpoints[2].status == "missing"
    with pytest.raises(ReportError, match="distinct"):
        build_trend([SeriesItem("a", "x", a), SeriesItem("a", "y", b)])
    with pytest.raises(ReportError, match="at least one"):
        build_trend([])


class _Cells(HTMLParser):
    """The verdict table of a trend page: checkpoint -> {check id: verdict}, and the links."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.links: list[str] = []
        self.svgs = 0
        self._row = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-checkpoint"):
            self._row = a["data-checkpoint"] or ""
            self.rows[self._row] = {}
        elif tag == "td" and a.get("data-check-id") and self._row:
            self.rows[self._row][a["data-check-id"] or ""] = a.get("data-verdict") or ""
        elif tag == "a" and (a.get("href") or "").endswith("index.html"):
            self.links.append(a["href"] or "")
        elif tag == "svg":
            self.svgs += 1


def test_the_trend_folder_is_written_whole_with_links(tmp_path: Path) -> None:
    recs = series()
    labels = model_slugs([r.model["spec"] for r in recs])
    folders = [
        write_report(r, tmp_path / "reports", slug=lab)
        for r, lab in zip(recs, labels, strict=True)
    ]
    items = [
        SeriesItem(lab, r.model["spec"], r, f)
        for lab, r, f in zip(labels, recs, folders, strict=True)
    ]
    out = write_trend(build_trend(items), tmp_path / "reports")
    assert out.parent == tmp_path / "reports" / "trend"
    assert (out.parent / "latest").resolve() == out.resolve()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    data = json.loads((out / "trend.json").read_text())
    assert data["schema"] == "refusal-probe/trend" and data["schema_version"] == "1.0"
    assert [c["label"] for c in data["checkpoints"]] == labels
    assert data["checks"][1]["points"][1] == {
        "value": None, "lo": None, "hi": None, "verdict": "not_run"
    }
    page = _Cells()
    page.feed((out / "index.html").read_text())
    assert page.rows["checkpoint-1000"] == {
        "behaviour.harmful_refusal": "fail", "causal.ablation_drop": "pass"
    }
    assert page.rows["checkpoint-500"]["causal.ablation_drop"] == "not_run"
    assert page.svgs == 2  # one plot per check, inline
    for href in page.links:  # relative links that resolve to the checkpoints' reports
        assert (out / href).resolve().is_file(), href
    assert len(set(page.links)) == 3


def test_the_cli_builds_the_trend_from_audit_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recs = series()
    folders = [write_report(r, tmp_path / "runs") for r in recs]
    # Order is the order given, not the run ids' or the names'.
    given = [folders[2] / "audit.json", folders[0], folders[1] / "audit.json"]
    assert main(["trend", *map(str, given), "--report-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "trend of 3 checkpoints" in printed and "index.html" in printed
    data = json.loads((tmp_path / "out" / "trend" / "latest" / "trend.json").read_text())
    assert [c["label"] for c in data["checkpoints"]] == [
        "checkpoint-1000", "checkpoint-0", "checkpoint-500"
    ]
    assert (tmp_path / "out" / "trend" / "latest" / "index.html").is_file()
    (tmp_path / "broken.json").write_text("{")
    assert main(["trend", str(tmp_path / "broken.json"), "--report-dir", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(ReportError, match="does not exist"):
        trend_files([tmp_path / "missing.json"], tmp_path)


@pytest.mark.parametrize(
    ("specs", "labels"),
    [
        (["runs/a/ck-100", "runs/b/ck-100"], ["a-ck-100", "b-ck-100"]),
        (["organism-chat", "x/organism-chat.gguf"], ["organism-chat", "x-organism-chat"]),
        (["organism-chat", "organism-chat"], ["organism-chat", "organism-chat-2"]),
        (["a/b/c", "b/c", "c"], ["a-b-c", "b-c", "c"]),
        (["runs/ck-1/", "runs/ck-2"], ["ck-1", "ck-2"]),
    ],
)
def test_series_labels_are_distinct_and_short(specs: list[str], labels: list[str]) -> None:
    assert model_slugs(specs) == labels


def test_line_plots_name_categories() -> None:
    svg = line_svg(
        {
            "x": [0, 1, 2],
            "x_labels": ["checkpoint-0", "checkpoint-500", "a-very-long-checkpoint-name-1000"],
            "series": [{"name": "rate", "y": [0.9, None, 0.5]}],
        },
        "trend",
    )
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "checkpoint-500" in texts and "a-very-long-c…" in texts
    tips = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "a-very-long-checkpoint-name-1000: 0.5" in tips  # the full name on hover
    assert len(list(root.iter("{http://www.w3.org/2000/svg}circle"))) == 2  # None is skipped
