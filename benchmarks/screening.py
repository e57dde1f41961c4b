"""Screening candidate directions by attribution: does it keep the exact winner, and what it saves.

For each model: direction selection with every candidate scored exactly (the reference
procedure), then with ``DirectionConfig(screen=k)`` for each ``k`` (only the ``k`` lowest
first-order bypass estimates scored exactly). Records the chosen candidate, its exact bypass, the
rank correlation of estimate and exact bypass over the candidates scored both ways, the wall
time and forward passes. Deep models can skip the reference (``--no-reference``) and instead
score a random sample of the screened-out candidates exactly, to see whether any beats the winner.

    python benchmarks/screening.py --json benchmarks/screening_results.json
    python benchmarks/screening.py --models smollm2 --no-reference --sample 8 --k 16
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from refusal_probe import DirectionConfig, TensorCache, find_refusal_direction, load_model
from refusal_probe.errors import ScoringError
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.scoring.refusal import filter_by_score, refusal_scores, refusal_tokens
from refusal_probe.selection.search import split_texts
from refusal_probe.selection.selection import score_candidates


def filter_by_refusal(model: Any, fx: Any, conf: DirectionConfig) -> None:
    """Raise ScoringError when the training prompts cannot be filtered by refusal score."""
    h, l_ = split_texts(fx, conf.fit_split)
    tokens = refusal_tokens(model.tokenizer)
    filter_by_score(h, l_, refusal_scores(model, h, tokens), refusal_scores(model, l_, tokens))


ORGANISMS = (
    "organism-chat",
    "organism-base",
    "organism-chat-benign-ft",
    "organism-chat-harmful-ft",
)


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (no ties expected in these continuous scores)."""
    if len(a) < 3:
        return math.nan
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def run(
    spec: str, ks: list[int], reference: bool, sample: int, filter_prompts: bool
) -> dict[str, Any]:
    model = load_model(spec)
    fx = load_fixtures()
    out: dict[str, Any] = {"model": spec, "runs": {}}
    base_conf = DirectionConfig(alternative=False, n_resamples=100, filter_prompts=filter_prompts)
    if filter_prompts:
        try:  # a model that does not refuse leaves nothing to filter: use the prompts as they are
            filter_by_refusal(model, fx, base_conf)
        except ScoringError:
            base_conf = DirectionConfig(**{**base_conf.to_dict(), "filter_prompts": False})
    out["filter_prompts"] = base_conf.filter_prompts
    configs = ([("all", base_conf)] if reference else []) + [
        (f"screen={k}", DirectionConfig(**{**base_conf.to_dict(), "screen": k})) for k in ks
    ]
    results = {}
    for name, conf in configs:
        with tempfile.TemporaryDirectory() as tmp:  # cold: nothing cached between configs
            t0 = time.perf_counter()
            res = find_refusal_direction(model, fx, conf, cache=TensorCache(tmp))
            wall = time.perf_counter() - t0
        sel = res.selection
        results[name] = res
        out["runs"][name] = {
            "chosen": [res.direction.layer, res.direction.position],
            "chosen_bypass": sel.chosen.bypass if sel.chosen is not None else None,
            "passed_filters": sel.passed_filters,
            "scored": sum(c.discarded not in ("zero", "screened") for c in sel.grid),
            "wall_s": wall,
            "selection_forward_passes": sel.forward_passes,
        }
        print(name, out["runs"][name], flush=True)
    if reference and ks:
        exact = {(c.layer, c.position): c.bypass for c in results["all"].selection.grid}
        for k in ks:
            grid = results[f"screen={k}"].selection.grid
            pairs = [
                (c.estimate, exact[(c.layer, c.position)])
                for c in grid
                if c.estimate is not None and not math.isnan(exact[(c.layer, c.position)])
            ]
            out["runs"][f"screen={k}"]["spearman_estimate_vs_exact"] = spearman(
                [p[0] for p in pairs], [p[1] for p in pairs]
            )
    if sample and ks:
        res = results[f"screen={ks[-1]}"]
        left = [c for c in res.selection.grid if c.discarded == "screened"]
        rng = random.Random(0)
        picked = rng.sample(left, min(sample, len(left)))
        h, l_ = split_texts(fx, "val", base_conf.n_select)
        t0 = time.perf_counter()
        rows = []
        for c in picked:  # one exact score each (a restricted grid is a layer x position product)
            one = res.candidates.restrict((c.position,), (c.layer,))
            rows.append(score_candidates(model, one, h, l_, res.refusal_tokens, base_conf).grid[0])
        out["screened_out_sample"] = {
            "wall_s": time.perf_counter() - t0,
            "cells": [
                [c.layer, c.position, c.bypass, p.estimate]
                for c, p in zip(rows, picked, strict=True)
            ],
            "best_bypass": min(c.bypass for c in rows),
            "winner_bypass": res.selection.chosen.bypass if res.selection.chosen else None,
        }
        print("sample", out["screened_out_sample"], flush=True)
    out["estimates"] = [
        [c.layer, c.position, c.estimate, c.bypass, c.discarded]
        for c in results[configs[-1][0]].selection.grid
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ORGANISMS))
    ap.add_argument("--k", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--no-filter", action="store_true", help="do not filter prompts by refusal")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "results": [
            run(m, args.k, not args.no_reference, args.sample, not args.no_filter)
            for m in args.models
        ],
    }
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
