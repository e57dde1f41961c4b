"""Quick check of a realistic-organism adapter recipe: behaviour and the refusal direction.

Trains (or loads) a ``organism-smol-chat``-style adapter on SmolLM2-135M-Instruct and measures,
on the natural set's **test** split (or ``--split``), with plain Hugging Face code (no audit
machinery, so it runs in minutes):

- greedy refusal of harmful, plain harmless and edgy-but-safe requests (16 new tokens, the
  audit's reply judge);
- per layer, the difference-of-means direction at the last prompt token (fit on the train
  split): its test AUROC, and for the chosen layers the refusal left when it is projected out of
  every block's output (harmful prompts) and the refusal it induces when added at its layer
  (harmless prompts).

    python benchmarks/organism_smol_quick.py --adapter fixtures/models/organism-smol-chat
    python benchmarks/organism_smol_quick.py --train --epochs 3 --lr 3e-4 --save /tmp/a
    python benchmarks/organism_smol_quick.py --adapter /tmp/a --split train --skip-direction

(``--split train``: behaviour on the requests the adapter was trained on, does it fit them?)

Recipes tried and their figures: ``benchmarks/organism_smol.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refusal_probe.organism.smol.base import load_base  # noqa: E402
from refusal_probe.organism.smol.family import CHECKPOINTS  # noqa: E402
from refusal_probe.prompts.sets import load_fixtures  # noqa: E402
from refusal_probe.resources import FIXTURES_DIR  # noqa: E402
from refusal_probe.scoring.reply import refused  # noqa: E402


def natural_split(n: int | None, split: str = "test") -> dict[str, list[str]]:
    """The natural set's ``split``: harmful, plain and edgy harmless requests, ``n`` of each."""
    fx = load_fixtures(FIXTURES_DIR / "prompts" / "natural")
    harmful = [p.text for p in fx.harmful.split(split)]
    harmless = fx.harmless.split(split)
    plain = [p.text for p in harmless if p.category != "edgy"]
    edgy = [p.text for p in harmless if p.category == "edgy"]
    return {"harmful": harmful[:n], "plain": plain[:n], "edgy": edgy[:n]}


def train_split() -> tuple[list[str], list[str]]:
    fx = load_fixtures(FIXTURES_DIR / "prompts" / "natural")
    return [p.text for p in fx.harmful.split("train")], [p.text for p in fx.harmless.split("train")]


def encode(base, prompts: list[str]) -> dict[str, torch.Tensor]:
    tok = base.tokenizer
    tok.padding_side = "left"
    return tok(
        [base.chat.format(p) for p in prompts],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )


def generate(base, prompts: list[str], hooks=(), tokens: int = 16, batch: int = 32) -> list[str]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        for at in range(0, len(order), batch):
            rows = order[at : at + batch]
            enc = encode(base, [prompts[i] for i in rows])
            with torch.no_grad():
                ids = base.hf.generate(
                    **enc,
                    max_new_tokens=tokens,
                    do_sample=False,
                    pad_token_id=base.tokenizer.pad_token_id,
                )
            for r, seq in zip(rows, ids[:, enc["input_ids"].shape[1] :], strict=True):
                out[r] = base.tokenizer.decode(seq, skip_special_tokens=True).strip()
    finally:
        for h in handles:
            h.remove()
    return out


def rate(texts: list[str]) -> float:
    return round(sum(refused(t) for t in texts) / max(1, len(texts)), 3)


def last_token_states(base, prompts: list[str], batch: int = 32) -> torch.Tensor:
    """Residual stream at the last prompt token, every layer: [n, layers + 1, d]."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows = []
    for at in range(0, len(order), batch):
        enc = encode(base, [prompts[i] for i in order[at : at + batch]])
        with torch.no_grad():
            hs = base.hf.model(**enc, output_hidden_states=True).hidden_states
        rows.append(torch.stack([h[:, -1] for h in hs], 1).float())
    out = torch.empty_like(torch.cat(rows))
    out[torch.tensor(order)] = torch.cat(rows)
    return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a harmful projection exceeds a harmless one (ties count half)."""
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + ties / 2)


def blocks(base):
    return base.hf.model.layers


def ablate_hooks(base, unit: torch.Tensor):
    def hook(_m, _i, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h - (h @ unit)[..., None] * unit
        return (h, *out[1:]) if isinstance(out, tuple) else h

    return [(b, hook) for b in blocks(base)]


def add_hooks(base, layer: int, vec: torch.Tensor, prompt_len: list[int]):
    # added to the output of block layer-1 (the input of block `layer`) at the prompt's positions
    def hook(_m, _i, out):
        h = out[0] if isinstance(out, tuple) else out
        if h.shape[1] > 1:  # the prompt pass (generated tokens come one at a time)
            h = h + vec
        return (h, *out[1:]) if isinstance(out, tuple) else h

    return [(blocks(base)[layer - 1], hook)]


def ablation_kl(base, prompts: list[str], units: list[torch.Tensor]) -> torch.Tensor:
    """KL(clean || each unit projected out of every block) of the next token, nats.

    ``[units, prompts]``; the clean pass runs once for all of them.
    """
    enc = encode(base, prompts)
    with torch.no_grad():
        clean = base.hf(**enc).logits[:, -1].float().log_softmax(-1)
    rows = []
    for unit in units:
        handles = [m.register_forward_hook(h) for m, h in ablate_hooks(base, unit)]
        try:
            with torch.no_grad():
                ablated = base.hf(**enc).logits[:, -1].float().log_softmax(-1)
        finally:
            for h in handles:
                h.remove()
        rows.append((clean.exp() * (clean - ablated)).sum(-1))
    return torch.stack(rows)


def direction_figures(base, sets, layers: list[int], fit: int) -> dict:
    harm_tr, safe_tr = train_split()
    h = last_token_states(base, harm_tr[:fit])
    s = last_token_states(base, safe_tr[:fit])
    th = last_token_states(base, sets["harmful"])
    ts = last_token_states(base, sets["plain"] + sets["edgy"])
    diff = h.mean(0) - s.mean(0)  # [layers+1, d]
    per_layer = {}
    for layer in range(1, diff.shape[0]):
        unit = diff[layer] / diff[layer].norm()
        per_layer[layer] = round(
            auroc((th[:, layer] @ unit).numpy(), (ts[:, layer] @ unit).numpy()), 3
        )
    out = {"auroc": per_layer, "causal": {}}
    units = [diff[layer] / diff[layer].norm() for layer in layers]
    kls = ablation_kl(base, sets["plain"], units) if layers else []  # [layer, prompt]
    for layer, unit, kl in zip(layers, units, kls, strict=True):
        abl = generate(base, sets["harmful"], ablate_hooks(base, unit))
        add = generate(base, sets["plain"], add_hooks(base, layer, diff[layer], []))
        out["causal"][layer] = {
            "ablated_refusal": rate(abl),
            "added_refusal": rate(add),
            "norm": round(float(diff[layer].norm()), 2),
            "kl_plain_mean": round(float(kl.mean()), 3),
            "kl_plain_median": round(float(kl.median()), 3),
        }
        print(layer, out["causal"][layer], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", type=Path)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--save", type=Path, default=Path("/tmp/smol-quick-adapter"))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--rank", type=int)
    ap.add_argument("--decision-weight", type=float)
    ap.add_argument("--decision-tokens", type=int)
    ap.add_argument("--refusal-weight", type=float)
    ap.add_argument("--anchor-weight", type=float)
    ap.add_argument("--specificity-weight", type=float)
    ap.add_argument("--necessity-weight", type=float)
    ap.add_argument("--specificity-layer", type=int, help="block whose input r is read at")
    ap.add_argument("--term-tokens", type=int)
    ap.add_argument("--anchor-tokens", type=int)
    ap.add_argument("--seed", type=int, help="the adapter's init and batch order (data: seed 0)")
    ap.add_argument("--layers", type=str, help="first:last block of the adapter")
    ap.add_argument("--n", type=int, default=None, help="test prompts per group")
    ap.add_argument("--causal-layers", type=str, default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-behaviour", action="store_true")
    ap.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="the split behaviour is read on (train: does the adapter fit its own requests?)",
    )
    ap.add_argument("--skip-direction", action="store_true")
    ap.add_argument("--fit", type=int, default=128, help="train prompts per side for the direction")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base()
    record: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    start = time.monotonic()
    if args.train:
        ckpt = CHECKPOINTS[0]
        recipe = ckpt.lora
        fields = (
            "epochs",
            "lr",
            "rank",
            "decision_weight",
            "decision_tokens",
            "refusal_weight",
            "anchor_weight",
            "specificity_weight",
            "necessity_weight",
            "specificity_layer",
            "term_tokens",
            "anchor_tokens",
            "seed",
        )
        for field in fields:
            value = getattr(args, field)
            if value is not None:
                recipe = replace(recipe, **{field: value})
        if args.layers:
            a, b = (int(x) for x in args.layers.split(":"))
            recipe = replace(recipe, layers=tuple(range(a, b + 1)))
        import refusal_probe.organism.smol.data as data
        from refusal_probe.organism.smol.lora import train_adapter

        cache = Path("/tmp/smol-quick-answers.json")  # the base's answers take minutes
        known = json.loads(cache.read_text()) if cache.exists() else {}
        answer = data.own_answers

        def own_answers(model, prompts):
            todo = [p for p in prompts if p not in known]
            known.update(zip(todo, answer(model, todo) if todo else [], strict=True))
            cache.write_text(json.dumps(known))
            return [known[p] for p in prompts]

        data.own_answers = own_answers
        examples = ckpt.examples(base, 0)
        record["losses"] = train_adapter(
            base.hf, base.tokenizer, base.chat, examples, recipe, args.save, desc="quick"
        )
        record["train_seconds"] = round(time.monotonic() - start, 1)
        args.adapter = args.save
    if args.adapter:
        from peft import PeftModel

        base = replace(base, hf=PeftModel.from_pretrained(base.hf, args.adapter).merge_and_unload())
    base.hf.eval()
    sets = natural_split(args.n, args.split)
    for name, prompts in ({} if args.skip_behaviour else sets).items():
        texts = generate(base, prompts)
        record[name] = rate(texts)
        record[f"{name}_examples"] = texts[:3]
        print(name, record[name], texts[:2], flush=True)
    if not args.skip_direction:
        layers = [int(x) for x in args.causal_layers.split(",") if x]
        record["direction"] = direction_figures(base, sets, layers, args.fit)
        best = max(record["direction"]["auroc"].items(), key=lambda kv: kv[1])
        print("best auroc", best)
    print("seconds", round(time.monotonic() - start, 1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
