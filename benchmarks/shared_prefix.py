"""What running a batch's shared template tokens once saves, pass by pass, with the same results.

For each model and prompt set, each kind of pass the audit runs is timed with sharing off and on
(``refusal_probe.activations.prefix.sharing``), alternately, in one process: next-token scoring
(no intervention, and with a direction ablated), greedy 16-token generation under ablation, the
capture of every layer at the post-instruction positions, and the monitor's pooled capture. Each
row reports both wall times, their ratio, the token positions run, and the largest difference of
the results (logits, activations) or the completions that differ.

    python benchmarks/shared_prefix.py --json benchmarks/shared_prefix.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_probe.activations import prefix  # noqa: E402
from refusal_probe.activations.capture import capture  # noqa: E402
from refusal_probe.activations.runner import Work, counting  # noqa: E402
from refusal_probe.activations.sites import POST_INSTRUCTION, Site  # noqa: E402
from refusal_probe.direction.estimators import Direction  # noqa: E402
from refusal_probe.interventions.hooks import Ablate  # noqa: E402
from refusal_probe.model.loading import load_model  # noqa: E402
from refusal_probe.monitor.pooled import pooled_activations  # noqa: E402
from refusal_probe.prompts.sets import load_fixtures, stratified_sample  # noqa: E402
from refusal_probe.resources import FIXTURES_DIR  # noqa: E402
from refusal_probe.scoring.generation import generate  # noqa: E402
from refusal_probe.scoring.refusal import map_last_logits  # noqa: E402

SETS = {"grammar": FIXTURES_DIR / "prompts", "natural": FIXTURES_DIR / "prompts" / "natural"}


def _diff(a: Any, b: Any) -> str:
    if isinstance(a, list):
        return f"{sum(x != y for x, y in zip(a, b, strict=True))}/{len(a)} completions differ"
    return f"max |difference| {float((a - b).abs().max()):.1e}"


def _passes(model: Any, prompts: list[str]) -> dict[str, Callable[[], Any]]:
    d = Direction(
        torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)),
        layer=model.n_layers // 2,
        position=-1,
        method="diff_means",
        n_harmful=1,
        n_harmless=1,
    )
    sites = tuple(Site(layer, "resid_pre") for layer in range(model.n_layers))
    layers = list(range(model.n_layers))
    return {
        "next-token scores": lambda: map_last_logits(model, prompts, lambda r, x: x)[0],
        "next-token scores, ablated": lambda: map_last_logits(
            model, prompts, lambda r, x: x, [Ablate(d)]
        )[0],
        "generation (16 tokens), ablated": lambda: generate(
            model, prompts, [Ablate(d)], max_new_tokens=16
        )[0],
        "capture, every layer, post-instruction": lambda: capture(
            model, prompts, sites, POST_INSTRUCTION, progress=False
        ).values,
        "monitor's pooled capture, every layer": lambda: pooled_activations(
            model, prompts, layers
        ).pools["instruction"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["smollm2:grammar", "smollm2:natural"])
    ap.add_argument("--n", type=int, default=64, help="prompts (half harmful, half harmless)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.models:
        name, _, which = spec.partition(":")
        fx = load_fixtures(SETS[which or "grammar"])
        half = args.n // 2
        prompts = [
            p.text
            for side in (fx.harmful, fx.harmless)
            for p in stratified_sample(side.split("val"), half, f"shared-prefix-{which}")
        ]
        model = load_model(name)
        shared = model.chat.encode(prompts).shared
        print(f"{spec}: {len(prompts)} prompts, {shared} shared template tokens", flush=True)
        for label, run in _passes(model, prompts).items():
            got = {}
            for on in (False, True):
                work = Work()
                with prefix.sharing(on), counting(work), torch.no_grad():
                    t0 = time.perf_counter()
                    out = run()
                    got[on] = (out, time.perf_counter() - t0, work.tokens)
            (a, t_off, n_off), (b, t_on, n_on) = got[False], got[True]
            row = {
                "model": spec,
                "pass": label,
                "seconds_whole": round(t_off, 2),
                "seconds_shared": round(t_on, 2),
                "ratio": round(t_off / t_on, 2),
                "tokens_whole": n_off,
                "tokens_shared": n_on,
                "results": _diff(a, b),
            }
            rows.append(row)
            print(
                f"  {label}: {t_off:.1f} s -> {t_on:.1f} s ({t_off / t_on:.2f}x), "
                f"tokens {n_off} -> {n_on}, {row['results']}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
