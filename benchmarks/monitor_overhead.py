"""Monitor overhead on a forward pass, and the monitor's figures on organism-chat (issue 7).

Part ``overhead``: the prompt pass of generation (``runner.forward`` with ``logits_to_keep=1``, as
``scoring.generate`` runs it) timed three ways, interleaved (the order rotates every round):

* ``bare``  — no hooks;
* ``hooks`` — with the monitor's readout hooks (``monitor_hooks``: exact position indices);
* ``guard`` — inside ``monitor.guard`` (embedding pre-hook, readouts counted from the end, the
  alarm checked against its threshold), the live path.

The figure is the median process CPU time per pass with one torch thread (on this shared box the
wall time swings 2-4x between identical runs; CPU time measures the work). Models: organism-chat,
and a random-init model of SmolLM2-135M's shape (30 layers, d=576), where the fixed cost of two
hooks is a smaller share.

Part ``organism``: on organism-chat with the shipped fixtures: the refusal direction
(``find_refusal_direction``), the monitor fit on train and calibrated on val harmless prompts at 5%
(harmfulness read at the last instruction token, and over the whole instruction), and
``evaluate_monitor`` on the test split, every jailbreak family (the ``suffix`` family as written by
``python -m refusal_probe.redteam``); then an *adaptive* suffix attack on each monitor (GCG on
refusal log-odds + ``--adaptive-weight`` x the monitor's alarm, same budget) evaluated the same
way; and the hardening of the refusal circuit.

Run: ``python benchmarks/monitor_overhead.py --json benchmarks/monitor_results.json``
(about 3 minutes on one thread; ``--part overhead --reps 5`` for a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from refusal_probe import LoadOptions, load_model
from refusal_probe.activations.cache import TensorCache
from refusal_probe.activations.runner import forward
from refusal_probe.direction.estimators import Direction
from refusal_probe.monitor.live import guard
from refusal_probe.monitor.scoring import SIGNALS, Calibration, Monitor, monitor_hooks
from refusal_probe.monitor.signals import OutputReadout, Readout
from refusal_probe.prompts.sets import load_fixtures, matched_pairs
from refusal_probe.scoring.refusal import refusal_tokens
from refusal_probe.testing import make_tiny_model

SMOL_SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def random_monitor(
    model: Any, span: str = "request_max", seed: int = 0, request: bool = True
) -> Monitor:
    """A calibrated monitor with random readouts (the overhead does not depend on the values).

    Shaped like the audit's monitor since issue 20: harmfulness at the request's sentence ends
    (``request_max``) and the refusal direction read there too (a fourth hook).
    """
    g = torch.Generator().manual_seed(seed)
    arch = model.identity.architecture
    layer = int(0.6 * model.n_layers)

    def direction(site: str, position: int) -> Direction:
        v = torch.randn(model.d_model, generator=g, dtype=torch.float64)
        return Direction(v, layer, position, "random", 0, 0, architecture=arch, site=site)

    ref = Readout("refusal", direction("resid_pre", -1), "post_instruction")
    harm = Readout("harmfulness", direction("resid_post", -(model.chat.n_post + 1)), span)
    # Thresholds no prompt reaches: the guard does all its work and raises nothing.
    cal = Calibration({s: 1e9 for s in SIGNALS}, 0.05, 1, 0.5, "")
    out = OutputReadout(refusal_tokens(model.tokenizer))
    extra = Readout("request_refusal", ref.direction, "request_max") if request else None
    return Monitor(ref, harm, out, cal, model.identity.fingerprint, request_refusal=extra)


def time_overhead(model: Any, monitor: Monitor, prompts: list[str], reps: int) -> dict[str, Any]:
    """Median CPU seconds per prompt pass: bare, with the readout hooks, inside the guard."""
    batch = model.chat.encode(prompts)

    def bare() -> None:
        forward(model, batch, logits_to_keep=1)

    def hooks() -> None:
        hk, result = monitor_hooks(model, monitor, batch)
        forward(model, batch, hk, logits_to_keep=1)
        result()

    # The guard is entered once per serving session, not per request: it is open (entered
    # before the clock starts) around the timed pass, as it would be around every request.
    runs = {"bare": bare, "hooks": hooks, "guard": bare}
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    seen = 0
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        for i in range(reps):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                with contextlib.ExitStack() as stack:
                    if name == "guard":
                        g = stack.enter_context(guard(model, monitor))
                    t0 = time.process_time()
                    runs[name]()
                    times[name].append(time.process_time() - t0)
                    if name == "guard":
                        seen += g.requests
    assert seen == reps  # every timed pass was read by the guard
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = {
        k: statistics.median(a / b for a, b in zip(times[k], times["bare"], strict=True))
        for k in ("hooks", "guard")
    }
    return {
        "batch": list(batch.input_ids.shape),
        "reps": reps,
        "median_cpu_s": med,
        "overhead_ratio_of_medians": {k: med[k] / med["bare"] - 1 for k in ("hooks", "guard")},
        "overhead_median_paired": {k: v - 1 for k, v in paired.items()},
        "all_cpu_s": times,
    }


def overhead(reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fx = load_fixtures()
    prompts = fx.harmful.texts("test")[:16] + fx.harmless.texts("test")[:16]
    model = load_model("organism-chat")
    out["organism-chat"] = time_overhead(model, random_monitor(model), prompts, reps)
    old = random_monitor(model, "last_instruction", request=False)  # the issue-7 monitor's shape
    out["organism-chat (two readouts)"] = time_overhead(model, old, prompts, reps)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_model(Path(tmp) / "smol", "llama", **SMOL_SHAPE)
        big = load_model(str(folder), LoadOptions(cache_dir=str(Path(tmp) / "c")))
        out["llama-135m-shape"] = time_overhead(
            big, random_monitor(big), prompts[:8] + prompts[16:24], max(reps // 3, 3)
        )
    return out


def organism(adaptive_weight: float) -> dict[str, Any]:
    """Fit, calibrate and evaluate the monitor on organism-chat; attack it adaptively."""
    import dataclasses

    from refusal_probe.monitor.evaluate import evaluate_monitor
    from refusal_probe.monitor.fit import MonitorConfig, fit_monitor
    from refusal_probe.monitor.hardening import measure_hardening
    from refusal_probe.prompts.sets import Jailbreak
    from refusal_probe.redteam import RedTeamConfig, search_suffixes
    from refusal_probe.selection.search import find_refusal_direction

    model = load_model("organism-chat")
    fx = load_fixtures()
    out: dict[str, Any] = {"model": model.identity.to_dict()}
    test = fx.harmful.split("test")
    with tempfile.TemporaryDirectory() as tmp:
        cache = TensorCache(tmp)
        found = find_refusal_direction(model, fx, cache=cache)
        out["direction"] = found.direction.to_dict()
        out["direction_passed_filters"] = found.selection.passed_filters
        for span in ("last_instruction", "instruction"):
            t0 = time.perf_counter()
            config = MonitorConfig(harmfulness_spans=(span,))
            monitor = fit_monitor(model, fx, found.direction, config)
            t1 = time.perf_counter()
            ev = evaluate_monitor(model, monitor, fx)
            t2 = time.perf_counter()
            # The adaptive attacker: GCG on refusal log-odds + weight * this monitor's alarm.
            rt = RedTeamConfig(monitor_weight=adaptive_weight)
            attack = search_suffixes(model, [p.text for p in test], rt, monitor=monitor)
            t3 = time.perf_counter()
            adaptive = dataclasses.replace(
                fx,
                jailbreaks=tuple(
                    Jailbreak(f"adaptive-{i}", p.id, "suffix", text, split="test")
                    for i, (p, text) in enumerate(zip(test, attack.texts(), strict=True))
                ),
            )
            ev_adaptive = evaluate_monitor(model, monitor, adaptive)
            out[span] = {
                "evaluation": ev.to_dict(),
                "adaptive": {
                    "monitor_weight": adaptive_weight,
                    "evaluation": ev_adaptive.to_dict(),
                    "summary": attack.summary(),
                    "examples": [
                        {"suffix": r.suffix, "score": r.score, "alarm": r.alarm}
                        for r in attack.results[:5]
                    ],
                },
                "seconds": {"fit": t1 - t0, "evaluate": t2 - t1, "adaptive_attack": t3 - t2},
            }

    def length(text: str) -> int:
        return int(model.chat.encode([text]).attention_mask.sum())

    pairs = matched_pairs(fx.pairs_in("test"), length)
    out["hardening"] = measure_hardening(model, pairs, k=5).to_dict()
    records = [json.loads(x) for x in (fx.root / "jailbreaks.jsonl").read_text().splitlines()]
    suffix = [r for r in records if r["family"] == "suffix"]
    out["redteam_records"] = {
        "n": len(suffix),
        "steps_used": sum(r.get("redteam", {}).get("steps", 0) for r in suffix),
        "budget": suffix[0]["redteam"]["budget"] if suffix else None,
        "model": suffix[0]["redteam"]["model"] if suffix else None,
        "mean_score_bare": sum(r["redteam"]["score_bare"] for r in suffix) / max(len(suffix), 1),
        "mean_score": sum(r["redteam"]["score"] for r in suffix) / max(len(suffix), 1),
    }
    return out


def _print_families(title: str, ev: dict[str, Any]) -> None:
    print(title)
    for f in ev["families"]:
        line = f"  {f['family']}: refusal {f['base_refusal']['value']:.2f} -> "
        line += f"{f['attack_refusal']['value']:.2f}, successful "
        line += f"{f['attack_refusal']['n'] - f['attack_refusal']['k']}"
        for sig in ("alarm", "harmfulness"):
            d = f["successful"][sig]
            line += f"; {sig} AUROC {d['auroc']['value']:.3f} TPR@1% {d['tpr_at_fpr']['value']:.2f}"
            line += f" TPR@thr {d['tpr_at_threshold']['value']:.2f}"
        print(line)
    fp = ev["false_positives"]
    print("  FPR alarm:", {g: round(v["alarm"]["value"], 3) for g, v in fp.items()})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=("overhead", "organism", "all"), default="all")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--adaptive-weight", type=float, default=1.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    }
    if a.part in ("overhead", "all"):
        result["overhead"] = overhead(a.reps)
        for name, r in result["overhead"].items():
            med = r["median_cpu_s"]
            print(
                f"{name} {r['batch']}: bare {med['bare'] * 1e3:.1f} ms, hooks "
                f"{r['overhead_ratio_of_medians']['hooks']:+.1%}, guard "
                f"{r['overhead_ratio_of_medians']['guard']:+.1%} (paired medians "
                f"{r['overhead_median_paired']['hooks']:+.1%}, "
                f"{r['overhead_median_paired']['guard']:+.1%})"
            )
    if a.part in ("organism", "all"):
        result["organism"] = org = organism(a.adaptive_weight)
        for span in ("last_instruction", "instruction"):
            _print_families(f"monitor, harmfulness span {span}:", org[span]["evaluation"])
            _print_families("  adaptive suffix attack:", org[span]["adaptive"]["evaluation"])
        h = org["hardening"]
        print("hardening:", h["components"], [round(x["value"], 3) for x in h["alone"]])
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
