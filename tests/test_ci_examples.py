"""The CI files of `examples/ci/` parse, and every refusal-probe command and option in them exists.

A renamed option would otherwise leave the examples calling something that is gone, and a user's
CI red (or, worse, an audit option silently dropped).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # installed with transformers, a dependency

from refusal_probe.__main__ import parser as cli_parser

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ci"


def _strings(node: Any) -> Iterator[str]:
    """Every shell line of a GitHub ``run`` or a GitLab ``script`` (nested lists flattened)."""
    if isinstance(node, str):
        yield from node.replace("\\\n", " ").splitlines()
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def github_jobs() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())["jobs"]


def gitlab_jobs() -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())
    return {k: v for k, v in data.items() if isinstance(v, dict) and "script" in v}


def commands() -> list[tuple[str, list[str]]]:
    """``(where, tokens)`` of every refusal-probe or pytest command in the examples."""
    lines = [
        (f"github {name}", line)
        for name, job in github_jobs().items()
        for step in job["steps"]
        for line in _strings(step.get("run", ""))
    ]
    lines += [
        (f"gitlab {name}", line)
        for name, job in gitlab_jobs().items()
        for line in _strings(job["script"])
    ]
    script = (EXAMPLES / "slurm-series.sh").read_text()
    lines += [("slurm", line) for line in _strings(script) if not line.lstrip().startswith("#")]
    out = []
    for where, line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        # A command quoted inside another (sbatch --wrap "...") is split as well.
        words = [w for word in words for w in (shlex.split(word) if " " in word else [word])]
        parts: list[list[str]] = [[]]
        for w in words:
            if w and set(w) <= set(";&|()"):
                parts.append([])
            else:
                parts[-1].append(w)
        for tokens in parts:
            for i, t in enumerate(tokens):
                if t == "refusal-probe" or (t == "refusal_probe" and tokens[i - 1] == "-m"):
                    out.append((where, ["refusal-probe", *tokens[i + 1 :]]))
                elif t == "pytest" and (i == 0 or tokens[i - 1] == "-m"):
                    out.append((where, ["pytest", *tokens[i + 1 :]]))
    return out


@pytest.fixture
def pytest_options(pytester: pytest.Pytester) -> set[str]:
    """Every option string pytest accepts with this package installed (its plugin's included).

    Read from pytest's own argument parser: ``--help`` leaves out aliases such as ``--junitxml``.
    """
    config = pytester.parseconfig("-p", "refusal_probe.pytest_plugin.plugin")
    return {o for o in config._parser.optparser._option_string_actions if o.startswith("--")}


def _options(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--")]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_the_examples_parse_and_call_refusal_probe() -> None:
    assert set(github_jobs()) >= {"cpu", "gpu", "trend"}
    assert set(gitlab_jobs()) >= {"audit-cpu", "audit-gpu", "trend"}
    where = {w for w, _ in commands()}
    assert {"github cpu", "github gpu", "github trend", "gitlab audit-gpu", "slurm"} <= where
    subprocess.run(["bash", "-n", str(EXAMPLES / "slurm-series.sh")], check=True)


def test_every_command_and_option_the_examples_use_exists(pytest_options: set[str]) -> None:
    subcommands = _subcommands()
    audit_own = {o for a in subcommands["audit"]._actions for o in a.option_strings}
    for where, tokens in commands():
        if tokens[0] == "pytest":
            unknown = set(_options(tokens)) - pytest_options
        else:
            assert tokens[1] in subcommands, f"{where}: no command refusal-probe {tokens[1]}"
            if tokens[1] == "audit":  # its own options, and pytest's (the plugin's included)
                known = pytest_options | audit_own
            else:
                known = {o for a in subcommands[tokens[1]]._actions for o in a.option_strings}
            unknown = set(_options(tokens)) - known
        assert not unknown, f"{where}: {' '.join(tokens)} uses unknown options {unknown}"


def test_every_audit_requires_its_checks_and_keeps_its_report() -> None:
    audits = [(w, t) for w, t in commands() if t[:2] == ["refusal-probe", "audit"]]
    assert len(audits) == 5
    for where, tokens in audits:
        assert tokens[tokens.index("--require-checks") + 1] == "all", where
        assert "--report-dir" in tokens and "--junitxml" in tokens, where
    gpu = [t for w, t in audits if "gpu" in w or w == "slurm"]
    assert gpu and all(t[t.index("--device") + 1] == "cuda" for t in gpu)
    assert "gpu" in github_jobs()["gpu"]["runs-on"] and "gpu" in gitlab_jobs()["audit-gpu"]["tags"]
    for name in ("cpu", "gpu"):
        upload = next(
            s for s in github_jobs()[name]["steps"] if "upload-artifact" in s.get("uses", "")
        )
        assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"
    for name in ("audit-cpu", "audit-gpu"):
        artifacts = gitlab_jobs()[name]["artifacts"]
        assert artifacts["when"] == "always" and "reports/" in artifacts["paths"]


def test_the_series_jobs_write_one_folder_that_trend_merges() -> None:
    trends = [(w, t) for w, t in commands() if t[:2] == ["refusal-probe", "trend"]]
    assert {w for w, _ in trends} == {"github trend", "gitlab trend", "slurm"}
    for where, tokens in trends:
        assert tokens[2] == tokens[tokens.index("--report-dir") + 1], where
    assert github_jobs()["trend"]["needs"] == "gpu"
    download = next(
        s for s in github_jobs()["trend"]["steps"] if "download-artifact" in s.get("uses", "")
    )
    assert download["with"]["merge-multiple"] is True and download["with"]["path"] == "reports"
    assert gitlab_jobs()["trend"]["needs"][0]["job"] == "audit-gpu"
