"""Patching speed: batched exact patching vs TransformerLens, and attribution vs exact.

On a random-init model of GPT-2-small size (built here, nothing downloaded) and ``--pairs`` matched
pairs whose formatted prompts are all ``--tokens`` tokens long, this times, interleaved:

* ``exact_heads``: :func:`refusal_probe.patching.exact_patching`, grid ``head_pos`` — every head at
  every post-instruction position (layer x head x pos cells), many cells per forward pass;
* ``tl_heads``: TransformerLens's ``patching.get_act_patch_attn_head_out_by_pos`` on the same
  model (the bridge), pairs and cells (an ``index_df`` restricted to the post-instruction
  positions), with the clean cache it needs: one full forward per cell;
* ``exact_mlps``: ``exact_patching`` grid ``mlp_pos``;
* ``attribution``: :func:`refusal_probe.patching.attribution_patching` of all heads and MLPs (grids
  ``head_pos``, ``head``, ``mlp_pos``, ``mlp``) in one go.

It reports the wall times, the ratios TL / exact and (exact heads + exact MLPs) / attribution, and
the largest absolute difference between TransformerLens's per-cell metric and ours (the mean
over pairs of the patched refusal log-odds), and the agreement of attribution with exact.

TransformerLens's sweep passes no attention mask, so it is only correct on unpadded batches: the
prompts here all have the same length for that reason. Our sweeps run TL once (it dominates the
run time) and ours before and after it; the reported time is the median. All use one thread
(``--threads``) so that neither side gets more of the 2 shared cores than the other.

Run: ``python benchmarks/patching_speed.py`` (~10 minutes on one CPU thread), ``--size tiny`` for a
smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from refusal_probe import load_model
from refusal_probe.patching import (
    agreement,
    attribution_patching,
    default_metric,
    encode_pairs,
    exact_patching,
)
from refusal_probe.stats import Bootstrap
from refusal_probe.testing import make_tiny_model

SIZES: dict[str, tuple[str, dict[str, Any]]] = {
    # GPT-2 small: 124M parameters, 12 layers x 12 heads.
    "gpt2-small": (
        "gpt2",
        {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
    ),
    "tiny": ("gpt2", {}),
}

_WORDS = (
    "how do I make a at home with my friends write letter to boss speed up wifi process python "
    "thank you first gather what need"
).split()
_SWAP = ("bomb", "cake")  # one token each in the test tokenizer


def matched_pairs(model: Any, n: int, tokens: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (harmful, harmless) pairs differing in one word, ``tokens`` tokens long formatted."""
    gen = torch.Generator().manual_seed(seed)
    out: list[tuple[str, str]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 20000:
            raise RuntimeError(
                f"could not build {n} pairs of {tokens} tokens; try another --tokens"
            )
        k = int(torch.randint(3, 20, (1,), generator=gen))
        words = [_WORDS[int(i)] for i in torch.randint(len(_WORDS), (k,), generator=gen)]
        at = int(torch.randint(k + 1, (1,), generator=gen))
        pair = tuple(" ".join(words[:at] + [w] + words[at:]) for w in _SWAP)
        enc = model.chat.encode(list(pair))
        if (
            enc.seq_len == tokens
            and int(enc.attention_mask.sum()) == 2 * tokens
            and pair not in out
        ):
            out.append(pair)  # type: ignore[arg-type]
    return out


def tl_head_sweep(model: Any, pairs: list[tuple[str, str]], metric: Any) -> torch.Tensor:
    """TransformerLens's one-forward-per-cell sweep over heads x post-instruction positions."""
    import pandas as pd
    from transformer_lens import patching

    batch = encode_pairs(model, pairs)
    width, n_post = batch.width, batch.clean.n_post
    rows = [
        (layer, width + o, h)
        for layer in range(model.n_layers)
        for h in range(model.n_heads)
        for o in range(-n_post, 0)
    ]  # our order: layer, head, pos
    index_df = pd.DataFrame(rows, columns=["layer", "pos", "head"])
    with torch.no_grad():
        _, clean_cache = model.bridge.run_with_cache(
            batch.clean.input_ids, names_filter=lambda n: n.endswith("hook_z")
        )
        values = patching.get_act_patch_attn_head_out_by_pos(
            model.bridge,
            batch.corrupted.input_ids,
            clean_cache,
            lambda logits: metric(logits[:, -1, :]).mean(),
            index_axis_names=None,
            index_df=index_df,
        )
    return values.double().cpu()


def timed(fn: Any) -> tuple[Any, float, float]:
    """Result, wall seconds and CPU seconds of this process (robust to other jobs running)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="gpt2-small", choices=sorted(SIZES))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument(
        "--tokens", type=int, default=24, help="formatted prompt length, template included"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    family, cfg = SIZES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = load_model(str(make_tiny_model(Path(tmp) / "m", family, **cfg)))
        print(f"built and loaded {model!r} in {time.perf_counter() - t0:.0f}s", flush=True)
        pairs = matched_pairs(model, args.pairs, args.tokens)
        metric = default_metric(model)
        exact_patching(model, pairs[:1], "mlp", boot=Bootstrap(10))  # warm-up
        load_before = os.getloadavg()
        names = ("exact_heads", "exact_mlps", "attribution", "tl_heads")
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        results: dict[str, Any] = {}
        jobs = {
            "exact_heads": lambda: exact_patching(model, pairs, "head_pos", metric=metric),
            "exact_mlps": lambda: exact_patching(model, pairs, "mlp_pos", metric=metric),
            "attribution": lambda: attribution_patching(
                model, pairs, ["head_pos", "head", "mlp_pos", "mlp"], metric=metric
            ),
            "tl_heads": lambda: tl_head_sweep(model, pairs, metric),
        }
        # ours, TL, ours: TL dominates the run time, so it runs once, between two rounds of ours
        for name in (
            "exact_heads",
            "exact_mlps",
            "attribution",
            "tl_heads",
            "attribution",
            "exact_mlps",
            "exact_heads",
        ):
            results[name], w, c = timed(jobs[name])
            wall[name].append(w)
            cpu[name].append(c)
            print(f"{name}: {w:.2f}s wall, {c:.2f}s cpu", flush=True)
        load_after = os.getloadavg()
    ex = results["exact_heads"]
    ours = (ex.corrupted[:, None] + ex.delta.reshape(len(pairs), -1)).mean(
        0
    )  # mean patched metric per cell
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    attr = results["attribution"]
    figures = {
        "model": repr(model),
        "pairs": len(pairs),
        "tokens": args.tokens,
        "n_post": int(encode_pairs(model, pairs).clean.n_post),
        "cells_heads": int(ex.delta[0].numel()),
        "cells_mlps": int(results["exact_mlps"].delta[0].numel()),
        "wall_seconds": med,
        "cpu_seconds": med_cpu,
        "wall_all": wall,
        "cpu_all": cpu,
        "tl_over_exact_heads_wall": med["tl_heads"] / med["exact_heads"],
        "tl_over_exact_heads_cpu": med_cpu["tl_heads"] / med_cpu["exact_heads"],
        "exact_over_attribution_wall": (med["exact_heads"] + med["exact_mlps"])
        / med["attribution"],
        "exact_over_attribution_cpu": (med_cpu["exact_heads"] + med_cpu["exact_mlps"])
        / med_cpu["attribution"],
        "max_abs_diff_vs_tl": float((results["tl_heads"] - ours).abs().max()),
        "metric_range": [float(ours.min()), float(ours.max())],
        "forwards_exact_heads": ex.forwards,
        "agreement_head_pos": str(agreement(ex, attr["head_pos"])),
        "agreement_mlp_pos": str(agreement(results["exact_mlps"], attr["mlp_pos"])),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
