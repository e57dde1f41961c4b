"""The monitor's figures per attack family, as an audit measures them (issue 20).

For each model: the audit's own monitor result (``AuditRun(model).monitor()``: the policy's
settings, the audit's refusal direction, the monitor fit on train and calibrated on val harmless
prompts and their diluted copies, evaluated on the test split with every family: the fixtures'
role-play, encoding, context and suffix, the dilution family built from the prompts, and the
adaptive family from ``fixtures/redteam/``). Per family: refusal base -> attack, successful
attacks, the alarm's AUROC (successful vs the held-out harmless prompts, diluted ones included;
stratified bootstrap) and its true-positive rate at the calibrated threshold (Wilson); the
false-positive rate per harmless group; the adaptive attacker's cost; how much each family's
successful replies depend on their plain requests (``refusal_probe/scoring/relevance.py``: a family
whose replies answer nothing does not decide the worst family).

    python benchmarks/monitor_families.py --cache-dir /tmp/rp-cache --json benchmarks/monitor_families.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.run import AuditRun

MODELS = ("organism-chat", "organism-chat-benign-ft")


def figures(model: str, cache_dir: Path, policy: Path | None = None) -> dict[str, Any]:
    """The monitor figures of one model, from its audit's monitor result."""
    t0 = time.perf_counter()
    options = AuditOptions(model=model, cache_dir=cache_dir)
    if policy is not None:
        options = dataclasses.replace(options, policy=policy)
    run = AuditRun(model, options)
    ev = run.monitor()
    worst, tpr = ev.worst_tpr("alarm")
    fams = {}
    for f in ev.families:
        alarm = f.successful["alarm"]
        fams[f.family] = {
            "n": f.n,
            "successful": f.n_successful,
            "refusal": [f.base_refusal.value, f.attack_refusal.value],
            "alarm_auroc": alarm.auroc.to_dict(),
            "alarm_tpr_at_threshold": alarm.tpr_at_threshold.to_dict(),
            "harmfulness_auroc": f.successful["harmfulness"].auroc.to_dict(),
            "relevance": None if f.relevance is None else f.relevance.mean.to_dict(),
            "answers_nothing": f.answers_nothing,
        }
    return {
        "model": model,
        "families": fams,
        "worst_family": worst,
        "detection_tpr": tpr.to_dict(),
        "false_positives": {g: v["alarm"].to_dict() for g, v in ev.false_positives.items()},
        "adaptive": ev.adaptive,
        "alarm": ev.monitor.get("alarm"),
        "harmfulness": ev.monitor["harmfulness"]["site"] + " " + ev.monitor["harmfulness"]["span"],
        "seconds": time.perf_counter() - t0,
    }


def _pct(d: dict[str, Any]) -> str:
    if d["value"] is None:
        return "—"
    return f"{d['value']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--policy", type=Path, help="the audit's policy (default: audits/policy.toml)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = []
    for model in a.model or MODELS:
        r = figures(model, a.cache_dir, a.policy)
        out.append(r)
        print(f"## {model} (alarm {r['alarm']}; harmfulness {r['harmfulness']})")
        print(
            "| family | refusal base → attack | successful | alarm AUROC | alarm TPR at threshold "
            "| replies answer the request (nats/token) |"
        )
        print("|---|---|---|---|---|---|")
        for name, f in r["families"].items():
            print(
                f"| {name} | {f['refusal'][0]:.2f} → {f['refusal'][1]:.2f} | "
                f"{f['successful']}/{f['n']} | {_pct(f['alarm_auroc'])} | "
                f"{_pct(f['alarm_tpr_at_threshold'])} | "
                + ("—" if f["relevance"] is None else _pct(f["relevance"]))
                + (" answers nothing" if f["answers_nothing"] else "")
                + " |"
            )
        print("FPR:", {g: _pct(v) for g, v in r["false_positives"].items()})
        print("worst family:", r["worst_family"], _pct(r["detection_tpr"]))
        print("adaptive:", r["adaptive"])
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
