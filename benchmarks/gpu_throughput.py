"""Extraction throughput on an accelerator: the engine's capture vs a bare Hugging Face forward.

Issue 8's GPU figure. For a random-init model of a given shape (nothing downloaded), in the given
dtype on the given device, with one batch of ``--batch`` prompts × ``--tokens`` tokens, this times
(CUDA-synchronised wall time, interleaved rounds, median):

* ``hf``: a bare forward of the unwrapped Hugging Face model (SDPA attention, its default);
* ``hf_hooks``: plain PyTorch pre-hooks on that model reading the residual stream entering every
  decoder layer at the post-instruction positions (stopping after the last layer's input);
* ``capture``: ``refusal_probe.activations.capture`` of ``resid_pre`` at every layer and the post-instruction
  span, from prompt texts (chat formatting and tokenizing included), through the bridge;
* ``bridge``: a plain bridge forward, to separate the bridge's own cost.

Throughput is prompt tokens per second; the figure of the issue is ``capture / hf`` (≥ 0.9).
With ``--audit`` it then runs the whole audit suite on the same model (``python -m refusal_probe
audit --device ... --dtype ...``) and records its wall time. The card's name, torch and CUDA
versions go into the record.

    python benchmarks/gpu_throughput.py --device cuda --dtype bfloat16 --audit --json $OUT/gpu.json
    python benchmarks/gpu_throughput.py --device cpu --dtype float32 --size tiny --reps 2  # dry run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from capture_speed import SIZES, HFResidCapture, prompts_of_length

from refusal_probe import LoadOptions, capture, load_model
from refusal_probe.activations.runner import forward
from refusal_probe.activations.sites import POST_INSTRUCTION, all_layers
from refusal_probe.testing import make_tiny_model

SHAPES = {
    **SIZES,
    "tiny": ("qwen2", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                       "num_attention_heads": 4, "num_key_value_heads": 2}),
}  # fmt: skip


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    family, overrides = SHAPES[args.size]
    folder = workdir / args.size
    make_tiny_model(folder, family, **overrides)
    dtype = getattr(torch, args.dtype)
    model = load_model(
        str(folder),
        LoadOptions(device=args.device, dtype=args.dtype, cache_dir=str(workdir / "convert")),
    )
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    prompts = prompts_of_length(model, args.batch, args.tokens)
    enc = model.chat.encode(prompts).to(args.device)
    sites = all_layers(model.n_layers, "resid_pre")
    kw = {"attention_mask": enc.attention_mask, "position_ids": enc.position_ids}
    hooked = HFResidCapture(hf, enc.n_post)

    methods = {
        "hf": lambda: hf(enc.input_ids, **kw),
        "hf_hooks": lambda: hooked(enc.input_ids, **kw),
        "capture": lambda: capture(
            model, prompts, sites, POST_INSTRUCTION, batch_size=args.batch, progress=False
        ),
        "bridge": lambda: forward(model, enc),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    with torch.no_grad():
        for fn in methods.values():  # warm-up (kernels, allocator)
            fn()
            fn()
        for r in range(args.reps):
            names = list(methods)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                sync(args.device)
                t0 = time.perf_counter()
                methods[name]()
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
    n_tokens = args.batch * args.tokens
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: n_tokens / v for k, v in med.items()}
    out: dict[str, Any] = {
        "size": args.size,
        "params_M": round(sum(p.numel() for p in hf.parameters()) / 1e6, 1),
        "dtype": args.dtype,
        "batch_x_tokens": [args.batch, args.tokens],
        "n_post": enc.n_post,
        "median_s": {k: round(v, 5) for k, v in med.items()},
        "tokens_per_s": {k: round(v) for k, v in tps.items()},
        "ratio_to_hf": {k: round(v / tps["hf"], 3) for k, v in tps.items()},
        "all_s": {k: [round(x, 5) for x in v] for k, v in times.items()},
    }
    if args.device.startswith("cuda"):
        out["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    # free the card for the audit's own process (the timing closures hold the models)
    methods.clear()
    hf = model = hooked = None
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    if args.audit:
        cmd = [sys.executable, "-m", "refusal_probe", "audit", "--model", str(folder),
               "--device", args.device, "--dtype", args.dtype, "--report-dir",
               str(args.report_dir), "--cache-dir", str(workdir / "audit-cache")]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out["audit"] = {
            "command": " ".join(cmd),
            "wall_s": round(time.perf_counter() - t0, 1),
            "exit_code": proc.returncode,  # a random model fails the audits: exit 1 expected
            "summary_tail": proc.stdout[-3000:],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--size", default="qwen2-0.5b", choices=list(SHAPES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--audit", action="store_true", help="also time the whole audit suite")
    ap.add_argument("--report-dir", type=Path, default=Path("reports"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    record: dict[str, Any] = {
        "card": torch.cuda.get_device_name() if args.device.startswith("cuda") else "none (CPU)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "machine": platform.machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        record["result"] = bench(args, Path(tmp))
    text = json.dumps(record, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
