"""The KL cost of projecting out an adapter's difference-of-means direction, by request group.

The quick check (``organism_smol_quick.py``) reads the KL on plain harmless requests only; the
audit's selection reads it on harmless validation requests, edgy-but-safe ones among them. This
reads both kinds on both splits (64 requests a group; the direction fit on 96 train requests a
side at the last prompt token, as the quick check fits it), mean / median / 90th percentile:

    python benchmarks/organism_smol_kl_groups.py /tmp/adQ --layers 16,18 \
        --json benchmarks/organism_smol_kl_groups_Q.json

Figures: ``benchmarks/organism_smol.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import organism_smol_quick as quick  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter", type=Path)
    ap.add_argument("--layers", default="16,18")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--fit", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from peft import PeftModel

    base = quick.load_base()
    base = replace(base, hf=PeftModel.from_pretrained(base.hf, args.adapter).merge_and_unload())
    base.hf.eval()
    harm_tr, safe_tr = quick.train_split()
    diff = quick.last_token_states(base, harm_tr[: args.fit]).mean(0) - quick.last_token_states(
        base, safe_tr[: args.fit]
    ).mean(0)  # [layers + 1, d]
    test, val = quick.natural_split(None, "test"), quick.natural_split(None, "val")
    groups = {
        "test plain": test["plain"],
        "test edgy": test["edgy"],
        "val plain": val["plain"],
        "val edgy": val["edgy"],
    }
    layers = [int(x) for x in args.layers.split(",")]
    units = [diff[layer] / diff[layer].norm() for layer in layers]
    out = {}
    for name, prompts in groups.items():
        kls = quick.ablation_kl(base, prompts[: args.n], units)  # [layer, prompt]
        for layer, kl in zip(layers, kls, strict=True):
            row = {
                "n": len(kl),
                "mean": round(float(kl.mean()), 3),
                "median": round(float(kl.median()), 3),
                "p90": round(float(kl.quantile(0.9)), 3),
            }
            out[f"L{layer} {name}"] = row
            print(layer, name, row, flush=True)
    out = dict(sorted(out.items(), key=lambda kv: int(kv[0].split()[0][1:])))  # layer-major
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
