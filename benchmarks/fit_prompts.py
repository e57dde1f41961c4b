"""How far the difference of means moves when fit on 128 train prompts per class instead of all.

For each model: the candidates (every layer, the last post-instruction position) fit on the whole
train split and on the seeded, category-stratified 128 per class that the default policy's
``fit_prompts = 128`` takes; their cosine per layer, and the capture's wall time each way.

    python benchmarks/fit_prompts.py --json benchmarks/fit_prompts.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_probe.model.loading import LoadOptions, load_model  # noqa: E402
from refusal_probe.prompts.sets import load_fixtures  # noqa: E402
from refusal_probe.resources import FIXTURES_DIR  # noqa: E402
from refusal_probe.selection.config import DirectionConfig  # noqa: E402
from refusal_probe.selection.search import candidate_directions  # noqa: E402

MODELS = {
    "organism-chat": FIXTURES_DIR / "prompts",
    "organism-chat-benign-ft": FIXTURES_DIR / "prompts",
    "organism-smol-chat": FIXTURES_DIR / "prompts" / "natural",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    config = DirectionConfig(positions=(-1,))
    out = {}
    for name in args.models:
        model = load_model(name, LoadOptions())
        fx = load_fixtures(MODELS[name])
        runs = {}
        for label, n in (("all", None), (str(args.n), args.n)):
            t0 = time.perf_counter()
            cands = candidate_directions(model, fx, split="train", n=n, config=config)
            runs[label] = (cands, round(time.perf_counter() - t0, 2))
        a, b = runs["all"][0], runs[str(args.n)][0]
        j = a.offsets.index(-1)
        cos = torch.nn.functional.cosine_similarity(a.vectors[:, j], b.vectors[:, j], dim=-1)
        out[name] = {
            "train_per_class": [len(fx.harmful.split("train")), len(fx.harmless.split("train"))],
            "cosine_per_layer": {
                int(k): round(float(c), 4) for k, c in zip(a.layers, cos, strict=True)
            },
            "seconds": {k: v[1] for k, v in runs.items()},
        }
        print(name, out[name], flush=True)
        del model
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
