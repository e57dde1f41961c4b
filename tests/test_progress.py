"""Progress on the terminal: silent by default, phase lines and bars where someone listens.

The engine's loops report to :mod:`refusal_probe.progress`; nothing is written unless a front end
installs a reporter. The pytest plugin writes past output capture to the terminal, is quiet under
``-q``, and nothing of it reaches the HTML report.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from planted import write_fixtures

from refusal_probe import progress
from refusal_probe.progress import TerminalProgress, reporting
from refusal_probe.testing import make_tiny_model


def _work(seconds: float = 0.3, steps: int = 6) -> None:
    """A phase with a counted loop, a loop nested inside it and a quick loop after it."""
    with progress.phase("behaviour"):
        with progress.task("generation", steps, "prompt") as bar:
            for _ in range(steps):
                time.sleep(seconds / steps)
                bar.update(1)
                with progress.task("inner", 2, "batch") as inner:  # counts silently
                    inner.update(2)
        with progress.task("quick", 3, "prompt") as bar:
            bar.update(3)


def test_nothing_is_written_unless_someone_listens(capsys: pytest.CaptureFixture[str]) -> None:
    _work(0.05)
    assert capsys.readouterr() == ("", "")


def test_a_log_gets_plain_lines_with_count_rate_and_time() -> None:
    out = io.StringIO()
    reporter = TerminalProgress(out, interactive=False, interval=0.1, min_seconds=0.2)
    with reporting(reporter):
        _work()
    text = out.getvalue()
    assert "\r" not in text  # no redraws in a log
    lines = text.splitlines()
    assert lines[0] == "refusal-probe: behaviour …"
    assert lines[-1].startswith("refusal-probe: behaviour done in 00:0")
    counts = [ln for ln in lines if "behaviour: generation: " in ln]
    assert counts and counts[-1].startswith("refusal-probe: behaviour: generation: 6/6 [")
    assert "prompt/s]" in counts[-1] or "s/prompt]" in counts[-1]
    assert len(counts) == len(set(counts))  # the closing draw does not repeat the last line
    assert "inner" not in text and "quick" not in text  # nested: silent; quick: no line


def test_a_terminal_gets_one_bar_redrawn_in_place() -> None:
    out = io.StringIO()
    with reporting(TerminalProgress(out, interactive=True, width=100, min_seconds=0.1)):
        _work()
    text = out.getvalue()
    bar = text.split("\n")[1]
    draws = [d for d in bar.split("\r") if d]
    assert all(d.startswith("refusal-probe: behaviour: generation: ") for d in draws)
    assert draws[-1].split("|")[0].endswith("100%") and "| 6/6 [" in draws[-1]
    assert "inner" not in text and "quick" not in text


def test_a_scaled_task_counts_candidates_from_rows() -> None:
    out = io.StringIO()
    with reporting(TerminalProgress(out, interactive=False, interval=10, min_seconds=0)):
        with progress.task("candidates ablated", 40, "candidate", scale=1 / 8) as bar:
            for _ in range(5):
                bar.update(8)
    assert "candidates ablated: 5.0/5.0 [" in out.getvalue()


def test_a_task_that_raises_still_closes() -> None:
    out = io.StringIO()
    reporter = TerminalProgress(out, interactive=False, interval=10, min_seconds=0)
    with reporting(reporter), pytest.raises(ValueError):
        with progress.task("capture", 4, "prompt") as bar:
            bar.update(1)
            raise ValueError("boom")
    with reporting(reporter), progress.task("next", 1, "prompt") as bar:
        bar.update(1)  # the failed task does not hold the terminal
    with reporting(reporter), pytest.raises(ValueError), progress.phase("loading x"):
        raise ValueError("damaged weights")
    text = out.getvalue()
    assert "capture: 1/4" in text and "next: 1/1" in text
    assert "refusal-probe: loading x stopped after 00:00" in text and "x done" not in text


# --- through pytest ------------------------------------------------------------------------------

AUDIT = '''
import time

import pytest

from refusal_probe import progress
from refusal_probe.stats.intervals import Interval


@pytest.mark.behaviour
def test_rate(audit, findings):
    """A check whose test loads the model and runs a counted loop."""
    findings.model  # the loading phase
    print("CAPTURED-BY-PYTEST")
    with progress.task("demo loop", 3, "step") as bar:
        for _ in range(3):
            time.sleep(0.5)
            bar.update(1)
    audit.check("behaviour.harmful_refusal", Interval(0.95, 0.92, 0.98, n=100, method="wilson"))
'''
POLICY = """\
version = 1

[behaviour.harmful_refusal]
at_least = 0.9
unit = "probability"
rationale = "A demo bar."
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("progress-project")
    audits = root / "audits"
    audits.mkdir()
    (audits / "test_demo.py").write_text(AUDIT)
    (root / "policy.toml").write_text(POLICY)
    return {
        "root": root,
        "audits": audits,
        "model": make_tiny_model(root / "tiny-llama", "llama"),
        "prompts": write_fixtures(root / "prompts"),
    }


def _audit(project: dict[str, Path], tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "refusal_probe", "audit", "--audits", str(project["audits"]),
        "-p", "no:cacheprovider", "--model", str(project["model"]),
        "--prompts", str(project["prompts"]), "--cache-dir", str(tmp_path / "cache"),
        "--policy", str(project["root"] / "policy.toml"), "--no-report", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_the_plugin_shows_phases_past_capture_but_not_in_the_html(
    project: dict[str, Path], tmp_path: Path
) -> None:
    html = tmp_path / "report.html"
    out = _audit(project, tmp_path, "--html", str(html))
    assert out.returncode == 0, (out.stdout, out.stderr)
    lines = out.stdout.splitlines()
    model = project["model"]
    assert f"refusal-probe: loading {model} …" in lines
    demo = [ln for ln in lines if ln.startswith("refusal-probe: demo loop: 3/3 [")]
    assert len(demo) == 1, out.stdout  # written to the terminal although pytest captures output
    assert "\r" not in out.stdout  # not a terminal: lines, no redraws
    assert "CAPTURED-BY-PYTEST" not in out.stdout  # the test's own output stays captured
    page = html.read_text()
    assert "CAPTURED-BY-PYTEST" in page  # what the test printed is in the HTML; progress is not
    assert "demo loop" not in page and f"loading {model}" not in page


def test_the_plugin_is_quiet_under_q(project: dict[str, Path], tmp_path: Path) -> None:
    out = _audit(project, tmp_path, "-q")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "refusal-probe: loading" not in out.stdout and "demo loop" not in out.stdout
