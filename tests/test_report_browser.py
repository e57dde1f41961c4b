"""The report page in a real browser: headless Chromium renders it without errors.

Needs Chromium (Debian: ``apt-get install -y chromium``); skipped when it is absent. The
screenshot is kept under ``reports/browser/`` as a CI artifact.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report import check, record

from refusal_probe.report import Figure, write_report

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")


def run_chromium(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    base = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run(base + list(args), capture_output=True, text=True, timeout=120)


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.checks: dict[str, str] = {}
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "article" and a.get("data-check-id"):
            self.checks[a["data-check-id"] or ""] = a.get("data-verdict") or ""
        self.svgs += tag == "svg"


def full_record():
    line = Figure(
        "line",
        "Separation per layer",
        {
            "x": list(range(8)),
            "series": [
                {
                    "name": "difference of means",
                    "y": [0.5, 0.6, 0.8, 0.95, 0.99, 0.99, 0.97, 0.9],
                    "lo": [0.4, 0.5, 0.7, 0.9, 0.97, 0.98, 0.95, 0.85],
                    "hi": [0.6, 0.7, 0.9, 0.99, 1, 1, 0.99, 0.95],
                }
            ],
            "threshold": 0.9,
            "mark_x": 4,
            "y_range": [0, 1],
            "x_label": "layer",
            "y_label": "AUROC",
        },
    )
    heat = Figure(
        "heatmap",
        "Selection grid",
        {
            "values": [[None, -1.0, 0.5], [2.0, -3.0, None]],
            "x_labels": ["-3", "-2", "-1"],
            "y_labels": ["0", "1"],
            "mark": [1, 1],
        },
    )
    checks = (
        check(),
        replace(
            check("representation.separation_auroc", "inconclusive", 0.91), figures=(line, heat)
        ),
        check("causal.ablation_drop", "fail", 0.2),
    )
    return record(checks=checks)


def test_the_report_renders_in_chromium(chromium: str, tmp_path: Path) -> None:
    run = write_report(full_record(), tmp_path)
    url = (run / "index.html").as_uri()
    dom = run_chromium(chromium, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Dom()
    parsed.feed(dom.stdout)
    assert parsed.checks == {
        "behaviour.harmful_refusal": "pass",
        "representation.separation_auroc": "inconclusive",
        "causal.ablation_drop": "fail",
    }
    assert parsed.svgs == 4  # a bar chart for two checks, the line and the heatmap for the third
    problems = [
        ln
        for ln in dom.stderr.splitlines()
        if "Uncaught" in ln or "Failed to load resource" in ln or "Refused to" in ln
    ]
    assert not problems, problems
    shots = ROOT / "reports" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    shot = run_chromium(
        chromium, f"--screenshot={shots / 'report.png'}", "--window-size=1280,3600", url
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert (shots / "report.png").stat().st_size > 10_000


MEASURE = """
<script>
window.addEventListener("load", () => {
  const out = [];
  for (const svg of document.querySelectorAll("svg.plot")) {
    const box = svg.getBoundingClientRect();
    const scale = box.height / svg.viewBox.baseVal.height;
    const items = [...svg.querySelectorAll(".legend-item")].map((g) => {
      const r = g.getBoundingClientRect();
      return { top: (r.top - box.top) / scale, bottom: (r.bottom - box.top) / scale,
               left: (r.left - box.left) / scale, right: (r.right - box.left) / scale };
    });
    out.push({ width: svg.viewBox.baseVal.width, items });
  }
  document.body.setAttribute("data-legends", JSON.stringify(out));
});
</script>
"""


def test_legends_sit_outside_the_data_and_never_overlap(chromium: str, tmp_path: Path) -> None:
    import json
    import re

    from refusal_probe.report.plots import H

    long_names = [
        "harmful prompts, refusal after ablation at every layer",
        "harmless prompts",
        "harmless: edgy-but-fine prompts with a rather long label",
        "x",
        "jailbreaks of the role-play family (successful only)",
    ]
    bars = Figure(
        "bars",
        "Many series",
        {
            "labels": ["a", "b"],
            "series": [{"name": n, "values": [0.2, 0.8]} for n in long_names],
            "y_range": [0, 1],
        },
    )
    line = Figure(
        "line",
        "Three series",
        {"x": [0, 1, 2], "series": [{"name": n, "y": [0.1, 0.5, 0.9]} for n in long_names[:3]]},
    )
    run = write_report(
        record(checks=(replace(check(), figures=(bars, line)),)), tmp_path
    )
    page = run / "index.html"
    page.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = run_chromium(chromium, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    legends = json.loads(
        re.search(r'data-legends="([^"]*)"', dom.stdout).group(1).replace("&quot;", '"')
    )
    measured = [p for p in legends if p["items"]]
    assert [len(p["items"]) for p in measured] == [5, 3]
    for plot in measured:
        items = plot["items"]
        for it in items:
            assert it["top"] >= H - 1, it  # below the plot area and its axis labels
            assert 0 <= it["left"] and it["right"] <= plot["width"] + 1, it
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                apart = (
                    a["right"] <= b["left"] or b["right"] <= a["left"]
                    or a["bottom"] <= b["top"] or b["bottom"] <= a["top"]
                )  # fmt: skip
                assert apart, (a, b)
