"""Localization with and without the shared template tokens run once, in one process.

The audit's localization (``refusal_probe.audit.circuit.localize_circuit``: attribution over every
head and MLP at the post-instruction span, exact confirmation, the circuit's mean ablation) on the
model's matched test pairs of its default prompt set, timed with ``prefix.sharing(False)`` and
then with sharing on (the default). Prints, per run, the wall time, the token positions the
forward passes ran, the circuit, and the largest difference of the two runs' effects.

    python benchmarks/localization_prefix.py --model smollm2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_probe.activations import prefix  # noqa: E402
from refusal_probe.activations.runner import Work, counting  # noqa: E402
from refusal_probe.audit.circuit import localize_circuit, matched_test_pairs  # noqa: E402
from refusal_probe.audit.prompt_inputs import PROMPT_SETS, default_set_name  # noqa: E402
from refusal_probe.model.loading import load_model  # noqa: E402
from refusal_probe.prompts.sets import load_fixtures  # noqa: E402
from refusal_probe.stats import Bootstrap  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    fixtures = load_fixtures(PROMPT_SETS[default_set_name(args.model)])
    pairs = matched_test_pairs(model, fixtures)
    runs = {}
    for on in (False, True):
        work = Work()
        t0 = time.perf_counter()
        with prefix.sharing(on), counting(work):
            result = localize_circuit(model, pairs, Bootstrap())
        runs["shared" if on else "whole"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "passes": work.passes,
            "tokens": work.tokens,
            "circuit": [str(c) for c in result.components],
            "effects": [e.value for e in result.effects],
            "fraction_restored": result.fraction_restored.value,
            "fraction_kept": result.fraction_kept.value,
        }
    whole, shared = runs["whole"], runs["shared"]
    out = {
        "model": args.model,
        "pairs": len(pairs),
        "threads": args.threads,
        "runs": runs,
        "ratio": round(whole["seconds"] / shared["seconds"], 2),
        "same_circuit": whole["circuit"] == shared["circuit"],
        "max_effect_diff": max(
            abs(a - b) for a, b in zip(whole["effects"], shared["effects"], strict=True)
        ),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
