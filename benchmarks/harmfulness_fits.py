"""The harmfulness search's whitened fits: one covariance per fold for every shrinkage, or one each.

For random pooled activations of a model's shape (prompts x sites x d_model, float64, as the
search holds them), times fitting the default shrinkages (1, 0.3, 0.1, 0.03) one at a time
(the covariance recomputed for each) against all at once (one covariance), and checks the
vectors are equal bit for bit.

    python benchmarks/harmfulness_fits.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_probe.monitor.harmfulness import _fits  # noqa: E402
from refusal_probe.monitor.harmfulness_choice import DEFAULT_SHRINKAGES  # noqa: E402

#: (label, prompts per class, sites, d_model)
SHAPES = [("SmolLM2-135M", 320, 30, 576), ("organism", 320, 5, 128)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print("| shape | one covariance per shrinkage | one per fold | ratio | equal |")
    print("|---|---|---|---|---|")
    for label, n, sites, d in SHAPES:
        h = torch.randn(n, sites, d, generator=gen, dtype=torch.float64) + 0.1
        l_ = torch.randn(n, sites, d, generator=gen, dtype=torch.float64)
        t0 = time.perf_counter()
        each = {a: _fits(h, l_, (a,))[a] for a in DEFAULT_SHRINKAGES}
        t1 = time.perf_counter()
        once = _fits(h, l_, DEFAULT_SHRINKAGES)
        t2 = time.perf_counter()
        equal = all(torch.equal(each[a], once[a]) for a in DEFAULT_SHRINKAGES)
        shape = f"{label} ({n} x {sites} x {d})"
        ratio = (t1 - t0) / (t2 - t1)
        print(f"| {shape} | {t1 - t0:.2f} s | {t2 - t1:.2f} s | {ratio:.2f}x | {equal} |")


if __name__ == "__main__":
    main()
