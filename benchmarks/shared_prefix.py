"""What batching by length and running a batch's shared template tokens once save, pass by pass.

For each model and prompt set, each kind of pass the audit runs is timed three ways, in turn, in
one process: the previous engine (batches of a fixed number of prompts sorted by length, the
whole batch run), batches by length (``runner.by_length``: none longer than twice its shortest),
and batches by length with the shared template tokens run once
(``refusal_probe.activations.prefix``). The passes: next-token scoring (no intervention; a
direction ablated; every row its own candidate ablated, as selection scores them), greedy
16-token generation under ablation, the capture of every layer at the post-instruction
positions, and the monitor's pooled capture. Each row gives the wall times, the ratio of the
first to the last, the token positions run, and the largest difference of the results (logits,
activations) or the completions that differ.

    python benchmarks/shared_prefix.py --json benchmarks/shared_prefix.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_probe.activations import (
    prefix,  # noqa: E402
    runner,  # noqa: E402
)
from refusal_probe.activations.capture import capture  # noqa: E402
from refusal_probe.activations.runner import Work, counting  # noqa: E402
from refusal_probe.activations.sites import POST_INSTRUCTION, Site  # noqa: E402
from refusal_probe.direction.estimators import Direction  # noqa: E402
from refusal_probe.interventions.hooks import Ablate, PerRow  # noqa: E402
from refusal_probe.model.loading import load_model  # noqa: E402
from refusal_probe.monitor.pooled import pooled_activations  # noqa: E402
from refusal_probe.prompts.sets import load_fixtures, stratified_sample  # noqa: E402
from refusal_probe.resources import FIXTURES_DIR  # noqa: E402
from refusal_probe.scoring.generation import generate  # noqa: E402
from refusal_probe.scoring.refusal import map_last_logits  # noqa: E402

#: Modules that batch prompts by length.
BATCHING = [
    "refusal_probe.activations.capture",
    "refusal_probe.monitor.signals",
    "refusal_probe.monitor.pooled",
    "refusal_probe.scoring.generation",
    "refusal_probe.scoring.relevance",
    "refusal_probe.scoring.refusal",
    "refusal_probe.selection.screening",
]


def fixed_size(lengths: list[int], size: int, spread: float = 0.0) -> list[list[int]]:
    """The previous batching: sorted by length, ``size`` prompts a batch whatever their length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


@contextmanager
def batching(fn: Callable[..., Any]) -> Iterator[None]:
    mods = [importlib.import_module(m) for m in BATCHING]
    saved = [m.by_length for m in mods]
    for m in mods:
        m.by_length = fn
    try:
        yield
    finally:
        for m, f in zip(mods, saved, strict=True):
            m.by_length = f


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
    others = [Direction(d.vector.roll(k), d.layer, -1, "diff_means", 1, 1) for k in range(1, 4)]
    per_row = PerRow(tuple((Ablate(others[i % 3]),) for i in range(3 * len(prompts))))
    sites = tuple(Site(layer, "resid_pre") for layer in range(model.n_layers))
    layers = list(range(model.n_layers))
    return {
        "next-token scores": lambda: map_last_logits(model, prompts, lambda r, x: x)[0],
        "next-token scores, ablated": lambda: map_last_logits(
            model, prompts, lambda r, x: x, [Ablate(d)]
        )[0],
        "next-token scores, 3 candidates ablated row by row": lambda: map_last_logits(
            model, prompts * 3, lambda r, x: x, [per_row]
        )[0],
        "generation (16 tokens), ablated": lambda: generate(
            model, prompts, [Ablate(d)], max_new_tokens=16
        )[0],
        "capture, every layer, post-instruction": lambda: (
            capture(model, prompts, sites, POST_INSTRUCTION, progress=False).values
        ),
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
            got = []
            for how, share in (
                (fixed_size, False),
                (runner.by_length, False),
                (runner.by_length, True),
            ):
                work = Work()
                with batching(how), prefix.sharing(share), counting(work), torch.no_grad():
                    t0 = time.perf_counter()
                    out = run()
                    got.append((out, time.perf_counter() - t0, work.tokens))
            (a, t_old, n_old), (_, t_len, n_len), (b, t_new, n_new) = got
            row = {
                "model": spec,
                "pass": label,
                "seconds_before": round(t_old, 2),
                "seconds_by_length": round(t_len, 2),
                "seconds_by_length_shared": round(t_new, 2),
                "ratio": round(t_old / t_new, 2),
                "tokens": [n_old, n_len, n_new],
                "results": _diff(a, b),
            }
            rows.append(row)
            print(
                f"  {label}: {t_old:.1f} s -> {t_len:.1f} s -> {t_new:.1f} s "
                f"({t_old / t_new:.2f}x), tokens {n_old} -> {n_len} -> {n_new}, {row['results']}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
