"""Sequential behaviour verdicts against fixed n: agreement, prompts saved, wall time.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/sequential.py [--seeds 10] [--out benchmarks/sequential.json]
    python benchmarks/sequential.py --models smollm2 --skip-wall --out benchmarks/sequential_smollm2.json

Part 1 (agreement): for each model (``--models``; default the organism family), the behaviour checks' verdicts with
``sequential = false`` (every test prompt, Wilson) and with ``sequential = true`` under
``--seeds`` prompt orders; the prompts each check read, the tokens and forward passes of the
generation. One process, each model loaded once. Part 2 (wall time): fresh
``python -m refusal_probe audit`` processes on organism-chat, cold (empty cache) then warm, with
and without sequential verdicts, for the whole audit and for the behaviour audit alone
(``-m behaviour``: the only case where the completions are not shared with the causal
validation). Everything is printed as Markdown and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refusal_probe.activations.runner import Work, counting  # noqa: E402
from refusal_probe.audit import AuditOptions, AuditRun  # noqa: E402
from refusal_probe.audit.behaviour import Behaviour  # noqa: E402
from refusal_probe.audit.policy import load_policy  # noqa: E402
from refusal_probe.audit.sequential import CHECKS, bars_of, complete  # noqa: E402
from refusal_probe.stats.verdicts import decide  # noqa: E402

FAMILY = ("organism-chat", "organism-chat-benign-ft", "organism-chat-harmful-ft", "organism-base")


def _policy(folder: Path, sequential: bool) -> Path:
    path = folder / f"policy-{'seq' if sequential else 'fixed'}.toml"
    path.write_text(
        f'extends = "default"\n[settings]\nsequential = {str(sequential).lower()}\n',
        encoding="utf-8",
    )
    return path


def _verdicts(run: AuditRun, seed: int, policy_path: Path) -> dict[str, Any]:
    """One behaviour measurement: verdict, prompts read and reason per check; generation work."""
    policy = load_policy(policy_path)
    work = Work()
    t0 = time.perf_counter()
    with counting(work):
        c = complete(run.model, run.fixtures, policy.settings, bars_of(policy), seed)
    seconds = time.perf_counter() - t0
    b = Behaviour.of(c, run.fixtures, policy.settings.confidence)
    out: dict[str, Any] = {"seconds": seconds, "passes": work.passes, "tokens": work.tokens}
    for side, check in CHECKS.items():
        iv = getattr(b, side)
        stop = b.stopping[side]
        out[check] = {
            "verdict": decide(iv, policy.check(check).threshold).verdict.value,
            "value": iv.value,
            "interval": [iv.low, iv.high],
            "used": stop.used,
            "available": stop.available,
            "rounds": stop.rounds,
            "reason": stop.reason,
        }
    return out


def agreement(seeds: int, folder: Path, models: tuple[str, ...] = FAMILY) -> dict[str, Any]:
    """Part 1: per model, the fixed-n measurement and one sequential one per seed."""
    fixed_policy, seq_policy = _policy(folder, False), _policy(folder, True)
    results: dict[str, Any] = {}
    for spec in models:
        opts = AuditOptions(spec, cache_dir=folder / "cache", policy=fixed_policy)
        run = AuditRun(spec, opts, load_policy(fixed_policy), audits=("behaviour",))
        fixed = _verdicts(run, 0, fixed_policy)
        seq = [_verdicts(run, s, seq_policy) for s in range(seeds)]
        results[spec] = {"fixed": fixed, "sequential": seq}
        run.release()
    return results


def _audit(cache: Path, reports: Path, policy: Path, extra: list[str]) -> tuple[float, str]:
    args = [sys.executable, "-m", "refusal_probe", "audit", "--model", "organism-chat"]
    args += ["--cache-dir", str(cache), "--report-dir", str(reports), "--policy", str(policy)]
    t0 = time.perf_counter()
    r = subprocess.run([*args, "-q", *extra], cwd=ROOT, capture_output=True, text=True)
    last = [ln for ln in r.stdout.splitlines() if ln.strip()][-1:] or [""]
    return time.perf_counter() - t0, last[0].strip("= ")


def wall_times(folder: Path) -> list[dict[str, Any]]:
    """Part 2: cold then warm audits of organism-chat, each mode in its own empty cache."""
    rows = []
    for scope, extra in (("whole audit", []), ("behaviour only", ["-m", "behaviour"])):
        for sequential in (False, True):
            cache = Path(tempfile.mkdtemp(dir=folder, prefix="cache-"))
            policy = _policy(folder, sequential)
            cold = _audit(cache, folder / "reports", policy, extra)
            warm = _audit(cache, folder / "reports", policy, extra)
            rows.append(
                {
                    "scope": scope,
                    "sequential": sequential,
                    "cold_s": cold[0],
                    "warm_s": warm[0],
                    "outcome": cold[1],
                }
            )
    return rows


def report(results: dict[str, Any], walls: list[dict[str, Any]]) -> str:
    """The Markdown tables."""
    lines = [
        "| model | check | fixed-n verdict (k/n) | sequential verdicts agreeing | prompts read "
        "(min–max of seeds) | reasons | tokens generated, fixed → sequential (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec, r in results.items():
        fixed, seq = r["fixed"], r["sequential"]
        tokens = sum(s["tokens"] for s in seq) / len(seq)
        for check in CHECKS.values():
            f = fixed[check]
            agree = sum(s[check]["verdict"] == f["verdict"] for s in seq)
            used = [s[check]["used"] for s in seq]
            reasons = sorted({s[check]["reason"] for s in seq})
            lines.append(
                f"| {spec} | {check} | {f['verdict']} ({f['value']:.2f}, n={f['used']}) | "
                f"{agree}/{len(seq)} | {min(used)}–{max(used)} of {f['available']} | "
                f"{', '.join(reasons)} | {fixed['tokens']} → {tokens:.0f} |"
            )
    lines += ["", "| scope | sequential | cold (s) | warm (s) | outcome |", "|---|---|---|---|---|"]
    for w in walls:
        lines.append(
            f"| {w['scope']} | {w['sequential']} | {w['cold_s']:.1f} | {w['warm_s']:.1f} | "
            f"{w['outcome']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "sequential.json")
    p.add_argument("--skip-wall", action="store_true", help="agreement only")
    p.add_argument("--models", nargs="+", default=list(FAMILY), help="models of part 1")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="seq-bench-") as tmp:
        folder = Path(tmp)
        results = agreement(a.seeds, folder, tuple(a.models))
        walls = [] if a.skip_wall else wall_times(folder)
    a.out.write_text(json.dumps({"agreement": results, "wall": walls}, indent=1) + "\n")
    print(report(results, walls))


if __name__ == "__main__":
    main()
