"""Wall time of ``pytest audits/``, cold (empty cache) and warm (the same cache again).

Usage::

    python benchmarks/audit_wall_time.py [--model organism-chat] [--baseline SPEC] [--runs 1]

Each run is a fresh ``python -m pytest audits/`` process, timed from start to exit, so the times
include interpreter start-up, imports and model loading. "Cold" uses a new, empty ``--cache-dir``;
"warm" repeats the command with that cache filled. Results are printed as a Markdown table row.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) of the child, and pytest's closing line."""
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    last = [ln for ln in r.stdout.splitlines() if ln.strip()][-1:] or [""]
    return time.perf_counter() - t0, cpu, last[0].strip("= ")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="organism-chat")
    p.add_argument("--baseline", default=None)
    p.add_argument("--runs", type=int, default=1, help="cold/warm pairs to run")
    p.add_argument("--threads", type=int, default=None, help="pass --threads N to the audit")
    a = p.parse_args()
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as reports:
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "audits/",
                "-q",
                "-p",
                "no:cacheprovider",
                "--model",
                a.model,
                "--cache-dir",
                cache,
                "--report-dir",
                reports,
            ]
            if a.baseline:
                cmd += ["--baseline", a.baseline]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            cold = timed(cmd)
            warm = timed(cmd)
            load = os.getloadavg()[0]
            cells = [
                a.model,
                a.baseline or "—",
                a.threads or "default",
                f"{cold[0]:.1f} s ({cold[1]:.0f} s CPU)",
                f"{warm[0]:.1f} s ({warm[1]:.0f} s CPU)",
                cold[2],
                f"{load:.1f}",
            ]
            print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
