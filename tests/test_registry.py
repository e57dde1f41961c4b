"""The policy file as the only registry of audits and checks, tested with pytester.

A new audit is a policy overlay and a test file; the two come from ``docs/AUDITS.md`` itself,
so the documented example cannot drift from what runs.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from planted import write_fixtures

from refusal_probe.testing import audit_options, make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
_EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", re.S)


def doc_examples() -> dict[str, str]:
    """The files that docs/AUDITS.md shows under "Adding an audit", by name."""
    found = dict(_EXAMPLE.findall((ROOT / "docs" / "AUDITS.md").read_text()))
    wanted = {"mypolicy.toml", "test_mycheck.py"}  # (the doc's other examples are run elsewhere)
    assert wanted <= set(found), found
    return {name: found[name] for name in wanted}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama (for the preflight) and the planted model's prompt folder, built once."""
    root = tmp_path_factory.mktemp("registry-env")
    return {
        "model": make_tiny_model(root / "tiny-llama", "llama"),
        "prompts": write_fixtures(root / "prompts"),
        "cache": root / "cache",
    }


def new_project(pytester: pytest.Pytester, env: dict[str, Path], **files: str) -> list[str]:
    """A user's project: the documented policy and audit file (``files`` adds or replaces some).

    No conftest: the installed package's pytest11 entry point brings the plugin, its options and
    the ``audit``/``findings`` fixtures, as it does in any repository.
    """
    for name, text in {**doc_examples(), **files}.items():
        (pytester.path / name).write_text(text)
    return ["--strict-markers", *audit_options(env, policy="mypolicy.toml")]


def the_record(pytester: pytest.Pytester) -> tuple[dict, Path]:
    runs = [p for p in (pytester.path / "reports").glob("*/*") if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "audit.json").read_text()), runs[0]


class _Checks(HTMLParser):
    """The check ids and verdicts of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "article" and a.get("data-check-id"):
            self.rows[a["data-check-id"] or ""] = a.get("data-verdict") or ""


def test_a_new_audit_is_a_policy_entry_and_a_test_function(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    r = pytester.runpytest(*new_project(pytester, env), "-m", "mycheck")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["mycheck.some_figure*PASS"])
    data, run = the_record(pytester)
    check = {c["id"]: c for c in data["checks"]}["mycheck.some_figure"]
    assert (check["audit"], check["verdict"], check["threshold"]) == ("mycheck", "pass", 0.5)
    audits = data["config"]["policy"]["audits"]
    assert audits[-1]["name"] == "mycheck" and audits[-1]["description"].startswith("my audit")
    assert [a["name"] for a in audits[:2]] == ["behaviour", "representation"]  # the shipped ones
    assert data["config"]["policy"]["checks"]["behaviour.harmful_refusal"]["threshold"] == 0.9
    parser = _Checks()
    parser.feed((run / "index.html").read_text())
    assert parser.rows == {"mycheck.some_figure": "pass"}
    markers = pytester.runpytest("--policy", "mypolicy.toml", "--markers").stdout.str()
    assert "@pytest.mark.mycheck: my audit: the share" in markers


def test_a_check_without_the_marker_still_reaches_the_record(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    unmarked = doc_examples()["test_mycheck.py"].replace(
        "pytestmark = pytest.mark.mycheck", "pytestmark = []"
    )
    r = pytester.runpytest(*new_project(pytester, env, **{"test_mycheck.py": unmarked}))
    r.assert_outcomes(passed=1)
    data, _ = the_record(pytester)
    assert [(c["id"], c["verdict"]) for c in data["checks"]] == [("mycheck.some_figure", "pass")]


def test_a_check_missing_from_the_policy_fails_with_one_line(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    missing = doc_examples()["test_mycheck.py"] + (
        "\n\ndef test_other_figure(audit):\n"
        '    """A figure the policy has no bar for."""\n'
        '    name = "other_figure"  # an id built at run time: caught when the test records it\n'
        '    audit.check(f"mycheck.{name}", wilson_interval(1, 2))\n'
    )
    r = pytester.runpytest(*new_project(pytester, env, **{"test_mycheck.py": missing}))
    r.assert_outcomes(passed=1, failed=1)
    line = (
        "PolicyError: mypolicy.toml: no section [mycheck.other_figure] for check "
        "'mycheck.other_figure'; add one with at_least/at_most, unit and rationale "
        "(known checks: mycheck.some_figure)"
    )
    out = r.stdout.str()
    assert line in out.splitlines(), out
    assert "Traceback" not in out and "audit.check(" not in out  # the line, not a traceback
    data, _ = the_record(pytester)
    errors = {n["id"]: n for n in data["not_run"] if n["kind"] == "error"}
    assert "no section [mycheck.other_figure]" in errors["mycheck.other_figure"]["reason"]
    assert data["summary"]["verdict"] == "fail"


def test_an_audit_marker_outside_the_policy_is_unknown(
    pytester: pytest.Pytester, env: dict[str, Path]
) -> None:
    args = new_project(pytester, env)
    (pytester.path / "test_other.py").write_text(
        "import pytest\n\n\n@pytest.mark.notanaudit\ndef test_x(audit):\n    pass\n"
    )
    r = pytester.runpytest(*args, "test_other.py")
    r.stdout.fnmatch_lines(["*'notanaudit' not found in `markers` configuration option*"])
