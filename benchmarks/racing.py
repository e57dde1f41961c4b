"""Racing selection against exhaustive scoring: the same winner, and the work it saves.

For each model and policy: direction selection as the audit configures it
(:func:`refusal_probe.audit.direction.direction_config`), once with every scored candidate on
every validation prompt and once raced (``DirectionConfig(race=True)``), no disk cache. Records
the chosen candidate of each, the candidate rows (one candidate on one prompt) and wall seconds.

    python benchmarks/racing.py --json benchmarks/racing.json
    python benchmarks/racing.py --models smollm2 --policies audits/policy-fast.toml

Results: ``benchmarks/racing.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from refusal_probe import TensorCache, find_refusal_direction, load_model
from refusal_probe.audit.direction import direction_config
from refusal_probe.audit.policy import load_policy
from refusal_probe.errors import ScoringError
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.resources import FIXTURES_DIR

MODELS = (
    "organism-chat",
    "organism-base",
    "organism-chat-benign-ft",
    "organism-chat-harmful-ft",
    "smollm2",
)


def select(model: Any, fx: Any, config: Any, cache: Any = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        res = find_refusal_direction(model, fx, config, cache=cache)
    except ScoringError:  # a model that rarely refuses: the audit fits on unfiltered prompts
        res = find_refusal_direction(model, fx, replace(config, filter_prompts=False), cache=cache)
    s = res.selection
    chosen = (s.chosen.layer, s.chosen.position) if s.chosen else None
    return {
        "chosen": chosen,
        "direction": [res.direction.layer, res.direction.position],
        "rows": s.rows,
        "exhaustive_rows": s.exhaustive_rows,
        "raced_out": sum("raced" in c.discarded for c in s.grid),
        "scored": sum(not c.discarded & {"zero", "screened"} for c in s.grid),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--policies", nargs="*", default=["audits/policy.toml"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--grammar", action="store_true", help="the grammar set for every model")
    ap.add_argument(
        "--share-captures",
        action="store_true",
        help="one temporary disk cache for both runs: the raced run reuses the exhaustive run's "
        "captures (selection itself is keyed apart), so compare rows, not seconds",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "runs": []}
    for spec in args.models:
        model = load_model(spec)
        natural = not args.grammar and (
            not spec.startswith("organism-") or spec.startswith("organism-smol")
        )
        fx = load_fixtures(FIXTURES_DIR / "prompts" / ("natural" if natural else ""))
        for policy in args.policies:
            settings = load_policy(policy).settings
            config = replace(direction_config(model.n_layers, settings, seed=0), n_resamples=100)
            cache = TensorCache(tempfile.mkdtemp()) if args.share_captures else None
            full = select(model, fx, replace(config, race=False), cache)
            raced = select(model, fx, replace(config, race=True), cache)
            row = {
                "model": spec,
                "policy": policy,
                "exhaustive": full,
                "raced": raced,
                "same_winner": full["chosen"] == raced["chosen"],
                "rows_saved": round(1 - raced["rows"] / max(1, full["rows"]), 3),
            }
            print(json.dumps(row), flush=True)
            out["runs"].append(row)
            if args.json:
                args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
