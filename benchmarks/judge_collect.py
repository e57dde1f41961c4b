"""Generate the unlabelled completions behind fixtures/judge/ (the judge's labelled set).

Greedy completions of the organisms and SmolLM2 on harmful and harmless prompts (the fixtures'
test split and the natural set), as they are and under the engine's interventions: the
difference-of-means direction at the last prompt token of a middle layer, ablated everywhere
(harmful prompts) or added (harmless prompts; once at the prompt's positions, once at every
position with a large coefficient, which gives the garbled replies a derailed model writes).
Each row is written without a label; the labels are added by reading each completion
(fixtures/judge/README.md gives the rules).

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/judge_collect.py OUT.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from refusal_probe.activations import Positions, Site, capture
from refusal_probe.direction import difference_of_means
from refusal_probe.interventions import Ablate, Add
from refusal_probe.model import load_model
from refusal_probe.prompts.sets import Prompt, load_fixtures
from refusal_probe.scoring import generate

ROOT = Path(__file__).resolve().parents[1]
NATURAL = ROOT / "fixtures" / "prompts" / "natural"

#: (model spec, label in the set, prompts per class per source, max new tokens).
PLAN = (
    ("organism-chat", "organism-chat", 16, 32),
    ("organism-chat-benign-ft", "organism-chat-benign-ft", 10, 32),
    ("organism-chat-harmful-ft", "organism-chat-harmful-ft", 10, 32),
    ("organism-base", "organism-base", 8, 32),
    ("smollm2", "smollm2", 14, 40),
)


def natural(side: str) -> list[Prompt]:
    """The natural set's prompts of one side (``harmful`` or ``harmless``)."""
    rows = [json.loads(x) for x in (NATURAL / f"{side}.jsonl").read_text().splitlines() if x]
    return [Prompt(r["id"], r["text"], r["category"], r["split"]) for r in rows]


def main(out: Path) -> None:
    """Write every planned completion to ``out`` as JSON Lines, unlabelled."""
    torch.set_num_threads(1)
    fx = load_fixtures()
    rng = random.Random(21)
    rows = []
    for spec, name, k, new in PLAN:
        model = load_model(spec)
        sources = {
            "harmful": rng.sample(fx.harmful.split("test"), k) + rng.sample(natural("harmful"), k),
            "harmless": rng.sample(fx.harmless.split("test"), k)
            + rng.sample(natural("harmless"), k),
        }
        plan = [(side, "baseline", p, ()) for side, ps in sources.items() for p in ps]
        if spec != "organism-base":
            layer = model.n_layers // 2
            site = [Site(layer=layer, kind="resid_pre")]
            pos = Positions("explicit", (-1,))
            train_h = fx.harmful.texts("train")[:24]
            train_l = fx.harmless.texts("train")[:24]
            cands = difference_of_means(
                capture(model, train_h, site, pos), capture(model, train_l, site, pos)
            )
            d = cands.direction(layer, -1)
            few = k // 2
            plan += [("harmful", "ablated", p, (Ablate(d),)) for p in sources["harmful"][:few]]
            plan += [("harmless", "added", p, (Add(d),)) for p in sources["harmless"][:few]]
            plan += [
                ("harmless", "added-all-x3", p, (Add(d, alpha=3.0, span="all"),))
                for p in sources["harmless"][few : few + 4]
            ]
        groups: dict[tuple[str, str], list[Prompt]] = {}
        ivs = {}
        for side, cond, p, iv in plan:
            groups.setdefault((side, cond), []).append(p)
            ivs[side, cond] = iv
        for (side, cond), ps in groups.items():
            texts, _ = generate(
                model, [p.text for p in ps], ivs[side, cond], max_new_tokens=new, batch_size=8
            )
            rows += [
                {"source": name, "prompt_id": p.id, "side": side, "condition": cond,
                 "prompt": p.text, "completion": t}
                for p, t in zip(ps, texts, strict=True)
            ]
        print(name, len(rows), flush=True)
        del model
    with out.open("w", encoding="utf-8") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({"id": f"gen-{i:04d}", **r}) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
