"""Capture speed and memory: the engine vs a bare Hugging Face forward and vs ``run_with_cache``.

For each model size (random init, built here, nothing downloaded) and one batch of
``--batch`` prompts × ``--tokens`` tokens, this times, interleaved round by round:

* ``hf``: a bare forward of an *unwrapped* copy of the same model (eager attention, as the
  bridge uses) on the same input ids, attention mask and position ids;
* ``hf_sdpa``: the same copy with PyTorch's SDPA attention (Hugging Face's default);
* ``hf_hooks``: the same capture done by hand on the unwrapped eager copy (plain PyTorch pre-hooks
  on the decoder layers, stopping after the last one's input): the equal-work baseline, since the
  engine also skips the last block and the LM head;
* ``capture``: ``refusal_probe.activations.capture(model, prompts, resid_pre at every layer)`` at the
  post-instruction span, from prompt texts (formatting and tokenizing included);
* ``bridge``: a plain bridge forward (no hooks), to separate the bridge's own cost;
* ``rwc``: TransformerLens ``run_with_cache()`` caching every hook, under ``no_grad``.

It reports the median CPU time of each (process time; with one torch thread it measures the work
done even when other jobs share the machine, which wall time does not) and its ratio to ``hf``,
the minimum wall time as a cross-check, the bytes held by the captured result and by the
``run_with_cache`` cache (unique storages), and the cold vs warm wall time of a capture through
the disk cache. Run: ``python benchmarks/capture_speed.py`` (both sizes, ~15 minutes on 2 CPU cores)
or ``--sizes gpt2-small`` for one.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from refusal_probe import LoadOptions, TensorCache, capture, load_model
from refusal_probe.activations.runner import forward
from refusal_probe.activations.sites import POST_INSTRUCTION, all_layers
from refusal_probe.testing import make_tiny_model

SIZES: dict[str, tuple[str, dict[str, Any]]] = {
    # GPT-2 small: 124M parameters.
    "gpt2-small": (
        "gpt2",
        {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
    ),
    # Qwen2.5-0.5B's shape: 494M parameters, GQA 14/2, tied embeddings.
    "qwen2-0.5b": (
        "qwen2",
        {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rope_theta": 1e6,
        },
    ),
}

_WORDS = (
    "how do I make a cake at home with my friends write letter to boss speed up wifi "
    "process python kill thank you first gather what need"
).split()


def prompts_of_length(model: Any, n: int, tokens: int, seed: int = 0) -> list[str]:
    """``n`` instructions whose formatted prompts are exactly ``tokens`` tokens long."""
    gen = torch.Generator().manual_seed(seed)
    out: list[str] = []
    while len(out) < n:
        words: list[str] = []
        while True:
            words.append(_WORDS[int(torch.randint(len(_WORDS), (1,), generator=gen))])
            length = model.chat.encode([" ".join(words)]).seq_len
            if length >= tokens:
                break
        if length == tokens:
            out.append(" ".join(words))
    return out


class _Stop(Exception):
    pass


class HFResidCapture:
    """The same capture by hand on the unwrapped model: plain PyTorch pre-hooks, same early stop.

    Reads the residual stream entering every decoder layer at the last ``n_post`` positions and
    stops the forward after the last layer's input, like the engine; the equal-work baseline.
    """

    def __init__(self, hf: Any, n_post: int) -> None:
        base = getattr(hf, "model", None) or hf.transformer
        self.hf, self.n_post = hf, n_post
        self.layers = list(getattr(base, "layers", None) or base.h)

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        b, n = input_ids.shape[0], len(self.layers)
        out = torch.empty(b, n, self.n_post, self.hf.config.hidden_size)

        def pre(i: int) -> Any:
            def fn(module: Any, args: tuple, kw: dict) -> None:
                hidden = args[0] if args else kw["hidden_states"]  # [batch, pos, d]
                out[:, i] = hidden[:, -self.n_post :].float()
                if i == n - 1:
                    raise _Stop

            return fn

        handles = [
            m.register_forward_pre_hook(pre(i), with_kwargs=True) for i, m in enumerate(self.layers)
        ]
        try:
            self.hf(input_ids, **kwargs)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return out


def cache_bytes(cache: Any) -> int:
    """Bytes held by the tensors of a cache, counting each storage once."""
    seen: dict[int, int] = {}
    for t in cache.values():
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench(size: str, reps: int, batch: int, tokens: int, workdir: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    family, overrides = SIZES[size]
    folder = workdir / size
    t0 = time.perf_counter()
    make_tiny_model(folder, family, **overrides)
    build_s = time.perf_counter() - t0
    model = load_model(str(folder), LoadOptions(cache_dir=str(workdir / "convert")))
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    hf_sdpa = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    n_params = sum(p.numel() for p in hf.parameters())
    prompts = prompts_of_length(model, batch, tokens)
    enc = model.chat.encode(prompts)
    sites = all_layers(model.n_layers, "resid_pre")
    fwd_kwargs = {"attention_mask": enc.attention_mask, "position_ids": enc.position_ids}

    def run_hf() -> None:
        hf(enc.input_ids, **fwd_kwargs)

    def run_hf_sdpa() -> None:
        hf_sdpa(enc.input_ids, **fwd_kwargs)

    hooked = HFResidCapture(hf, enc.n_post)

    def run_hf_hooks() -> None:
        hooked(enc.input_ids, **fwd_kwargs)

    def run_capture() -> None:
        capture(model, prompts, sites, POST_INSTRUCTION, batch_size=batch, progress=False)

    def run_bridge() -> None:
        forward(model, enc)

    def run_rwc() -> None:
        _, c = model.bridge.run_with_cache(enc.input_ids, **fwd_kwargs)
        del c

    methods = {
        "hf": run_hf,
        "hf_sdpa": run_hf_sdpa,
        "hf_hooks": run_hf_hooks,
        "capture": run_capture,
        "bridge": run_bridge,
        "rwc": run_rwc,
    }
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    with torch.no_grad():
        for fn in methods.values():  # warm-up
            fn()
        for r in range(reps):
            # Rotate the order each round so drift in machine load hits every method alike.
            names = list(methods)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                gc.collect()
                w, c = timed(methods[name])
                wall[name].append(w)
                cpu[name].append(c)
        acts = capture(model, prompts, sites, POST_INSTRUCTION, batch_size=batch, progress=False)
        _, full = model.bridge.run_with_cache(enc.input_ids, **fwd_kwargs)
        rwc_bytes = cache_bytes(full)
        n_hooks = len(full)
        del full
    # The engine and the hand-written baseline read the same numbers (prompts are all 64 tokens,
    # so neither pads).
    with torch.no_grad():
        same = torch.allclose(
            hooked(enc.input_ids, **fwd_kwargs), acts.values, atol=1e-4, rtol=1e-4
        )
    result_bytes = acts.values.numel() * acts.values.element_size()

    disk = TensorCache(workdir / "disk-cache" / size)
    cold = timed(
        lambda: capture(model, prompts, sites, cache=disk, batch_size=batch, progress=False)
    )
    warm = [
        timed(lambda: capture(model, prompts, sites, cache=disk, batch_size=batch, progress=False))
        for _ in range(5)
    ]

    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    wall_min = {k: min(v) for k, v in wall.items()}
    warm_wall = statistics.median(w for w, _ in warm)
    return {
        "size": size,
        "params_M": round(n_params / 1e6, 1),
        "layers": model.n_layers,
        "d_model": model.d_model,
        "batch": list(enc.input_ids.shape),
        "n_post": enc.n_post,
        "build_s": round(build_s, 1),
        "reps": reps,
        "cpu_median_s": {k: round(v, 3) for k, v in cpu_med.items()},
        "cpu_ratio_to_hf": {k: round(v / cpu_med["hf"], 3) for k, v in cpu_med.items()},
        "cpu_ratio_to_hf_hooks": {k: round(v / cpu_med["hf_hooks"], 3) for k, v in cpu_med.items()},
        "cpu_ratio_to_hf_sdpa": {k: round(v / cpu_med["hf_sdpa"], 3) for k, v in cpu_med.items()},
        "wall_min_s": {k: round(v, 3) for k, v in wall_min.items()},
        "wall_min_ratio_to_hf": {k: round(v / wall_min["hf"], 3) for k, v in wall_min.items()},
        "wall_all_s": {k: [round(x, 3) for x in v] for k, v in wall.items()},
        "cpu_all_s": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "result_shape": list(acts.values.shape),
        "result_bytes": result_bytes,
        "rwc_hooks": n_hooks,
        "rwc_bytes": rwc_bytes,
        "memory_ratio": round(result_bytes / rwc_bytes, 6),
        "engine_equals_hand_capture": same,
        "disk_cold_wall_s": round(cold[0], 3),
        "disk_warm_wall_s": round(warm_wall, 5),
        "disk_speedup_wall": round(cold[0] / warm_wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: CPU time then measures work even on a busy machine)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    print(json.dumps(env))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            res = bench(size, args.reps, args.batch, args.tokens, Path(tmp))
            print(json.dumps(res), flush=True)
            results.append(res)
            gc.collect()
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=2))


if __name__ == "__main__":
    main()
