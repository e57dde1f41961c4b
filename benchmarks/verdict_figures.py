"""The figures behind the causal and representation verdicts, per model (issue 21).

For each model: how the direction was chosen, its held-out separation and the breakdown by
behaviour and category, and the ablation's KL on the answered and the over-refused harmless test
prompts beside the KL of ablating random directions of the same norm. Where there is no causal
direction the audit runs no validation; this script validates the reported direction anyway, so
the KL question has figures on every model (marked ``measured_only``).

    PYTHONPATH=$PWD python benchmarks/verdict_figures.py organism-chat smollm2 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from refusal_probe.audit import AuditOptions, AuditRun
from refusal_probe.audit.behaviour import completions_of
from refusal_probe.audit.causal import validation_config
from refusal_probe.audit.separation import separation_breakdown
from refusal_probe.causal.validation import validate_direction


def figures(spec: str, cache: Path) -> dict[str, Any]:
    """Every figure of one model (see the module docstring)."""
    t0 = time.perf_counter()
    run = AuditRun(spec, AuditOptions(spec, cache_dir=cache), audits={"causal"})
    d = run.direction()
    if d.passed_filters:
        v = run.validation()
    else:
        config = validation_config(run.settings, run.options.seed)
        direction = run.direction_vector().direction
        v = validate_direction(run.model, direction, run.fixtures, config, cache=run._cache())
    rows = separation_breakdown(d, completions_of(v), run.fixtures, run.bootstrap)
    scored = [g for g in d.grid if g["bypass"] is not None and not math.isnan(g["bypass"])]
    old = min(scored, key=lambda g: (g["bypass"], g["layer"], g["position"]))
    curve = {r["layer"]: r["auroc"] for r in d.curve}
    return {
        "model": spec,
        "chosen_by": d.chosen_by,
        "layer": d.layer,
        "position": d.position,
        "passed_filters": d.passed_filters,
        "no_causal_direction": None if d.passed_filters else d.no_causal_direction(),
        "separation": d.selected_auroc.to_dict(),
        "best_test_layer": max(curve, key=curve.__getitem__),
        "best_test_auroc": max(curve.values()),
        "breakdown": [asdict(r) for r in rows],
        "old_fallback": None
        if d.passed_filters
        else {
            "layer": old["layer"],
            "position": old["position"],
            "bypass": old["bypass"],
            "kl_validation": old["kl"],
            "test_auroc_at_layer": curve.get(old["layer"]),
        },
        "measured_only": not d.passed_filters,
        "ablation_drop": {"value": -v.ablation_effect.value, "str": str(v.ablation_effect)},
        "addition_rise": {"value": v.addition_effect.value, "str": str(v.addition_effect)},
        "harmless_refusal_judge": str(v.harmless_baseline),
        "kl_all": v.kl_ablation.to_dict(),
        "kl_answered": v.kl_answered.to_dict(),
        "kl_over_refused": v.kl_over_refused.to_dict(),
        "kl_random": v.kl_random.to_dict(),
        "wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    """Measure the models given and write (or update) the JSON file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/verdict_figures.json"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cache-verdicts"))
    args = ap.parse_args()
    found = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for spec in args.models:
        found[spec] = figures(spec, args.cache)
        f = found[spec]

        def kl(k: str, f: dict[str, Any] = f) -> str:
            x = f[k]
            return "—" if x["value"] is None else f"{x['value']:.3f} (n={x['n']})"

        print(
            f"{spec}: {f['chosen_by']} L{f['layer']} pos {f['position']} AUROC "
            f"{f['separation']['value']:.3f}; KL answered {kl('kl_answered')}, over-refused "
            f"{kl('kl_over_refused')}, all {kl('kl_all')}, random {kl('kl_random')}; "
            f"{f['wall_s']:.0f}s",
            flush=True,
        )
        args.out.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
