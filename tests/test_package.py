"""The installable product: a wheel built from this checkout audits from any folder.

The wheel carries the audit suite, the policies, the organism family and the prompt sets (mapped
from the top-level audits/ and fixtures/ by setup.py). The test installs it into a folder of its
own, imports it from there (not from this checkout), and runs the README's audit command in an
empty folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, installed (without dependencies) into a folder."""
    root = tmp_path_factory.mktemp("package")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(root / "dist")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (root / "dist").glob("refusal_probe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "refusal_probe/shipped/audits/policy.toml" in names
    assert "refusal_probe/shipped/fixtures/models/organism-chat/model.safetensors" in names
    assert "refusal_probe/shipped/fixtures/prompts/harmful.jsonl" in names
    site = root / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return site


def test_the_installed_wheel_audits_the_default_model_from_an_empty_folder(
    installed: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(installed),
        "REFUSAL_PROBE_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("REFUSAL_PROBE_FIXTURES", None)
    where = subprocess.run(
        [sys.executable, "-c", "import refusal_probe.resources as r; print(r.FIXTURES_DIR)"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed), where
    out = subprocess.run(
        [sys.executable, "-m", "refusal_probe", "audit", "--model", "organism-chat", "-q"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    (record,) = [
        p for p in (tmp_path / "reports" / "organism-chat").glob("*/audit.json")
        if p.parent.name != "latest"
    ]
    data = json.loads(record.read_text())
    assert data["status"] == "complete" and data["summary"]["verdict"] == "pass"
    assert data["summary"]["pass"] == 12


def test_audit_help_lists_the_audit_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "refusal_probe", "audit", "--help"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for option in ("--audits", "--model=SPEC", "--baseline=", "--policy=", "--report-dir="):
        assert option in out.stdout
