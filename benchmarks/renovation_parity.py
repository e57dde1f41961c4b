"""Before/after table of the organism family's audits across a refactoring.

Runs (or reads) the three organism audits — organism-chat alone, benign-ft and harmful-ft against
chat — in two trees, each with its own fresh cache, and writes a Markdown table of every check:
verdict, point estimate and interval before and after, and whether the point moved.

    python benchmarks/renovation_parity.py --before /path/to/old/checkout --after . \
        --out benchmarks/renovation_parity.md

``--before-reports`` / ``--after-reports`` read report folders written earlier instead of running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "organism-chat": ["--model", "organism-chat"],
    "organism-chat-benign-ft": ["--model", "organism-chat-benign-ft", "--baseline", "organism-chat"],
    "organism-chat-harmful-ft": [
        "--model", "organism-chat-harmful-ft", "--baseline", "organism-chat",
    ],
}  # fmt: skip


def run_audits(tree: Path, out: Path) -> Path:
    """Audit the organism family in ``tree`` with a fresh cache; return the report folder."""
    reports = out / "reports"
    env = {**os.environ, "REFUSAL_PROBE_CACHE": str(out / "cache"), "OMP_NUM_THREADS": "1"}
    for args in RUNS.values():
        cmd = [sys.executable, "-m", "pytest", "audits", "-q", "-p", "no:cacheprovider", *args,
               "--report-dir", str(reports)]  # fmt: skip
        subprocess.run(cmd, cwd=tree, env=env, check=False, capture_output=True)
    return reports


def checks(reports: Path) -> dict[str, dict[str, dict]]:
    """``{model: {check id: check}}`` from the newest audit.json of each model."""
    out = {}
    for model in RUNS:
        runs = sorted((reports / model).glob("*/audit.json"))
        if runs:
            out[model] = {c["id"]: c for c in json.loads(runs[-1].read_text())["checks"]}
    return out


def table(before: dict, after: dict) -> str:
    """The Markdown table: one row per model and check."""

    def num(x: float | None) -> str:
        return "NaN" if x is None else f"{x:.4g}"

    def cell(c: dict | None) -> str:
        if c is None:
            return "not run"
        return f"{c['verdict']} {num(c['value'])} [{num(c['lo'])}, {num(c['hi'])}]"

    def equal(x: float | None, y: float | None) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and abs(x - y) <= 1e-9)

    rows = ["| model | check | before | after | point |", "|---|---|---|---|---|"]
    for model in RUNS:
        b, a = before.get(model, {}), after.get(model, {})
        for cid in sorted(set(b) | set(a)):
            cb, ca = b.get(cid), a.get(cid)
            if cb and ca:
                same = "equal" if equal(cb["value"], ca["value"]) else "MOVED"
                same += "" if cb["verdict"] == ca["verdict"] else ", VERDICT CHANGED"
            else:
                same = "—"
            rows.append(f"| {model} | `{cid}` | {cell(cb)} | {cell(ca)} | {same} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path)
    p.add_argument("--after", type=Path)
    p.add_argument("--before-reports", type=Path)
    p.add_argument("--after-reports", type=Path)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="parity-"))
    before = a.before_reports or run_audits(a.before.resolve(), work / "before")
    after = a.after_reports or run_audits(a.after.resolve(), work / "after")
    text = table(checks(before), checks(after))
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
