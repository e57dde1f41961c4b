"""Over-refusal on the natural set's validation split, by request length (words), per adapter.

    python benchmarks/organism_smol_val_length.py fixtures/models/organism-smol-chat /tmp/adG

Greedy, 16 new tokens, the audit's reply judge (as ``organism_smol_quick.py``). Prints and writes
``organism_smol_val_length.json`` beside this script: per adapter and bucket, [refused, prompts].
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from organism_smol_quick import generate  # noqa: E402

from refusal_probe.organism.smol.base import load_base  # noqa: E402
from refusal_probe.prompts.sets import load_fixtures  # noqa: E402
from refusal_probe.resources import FIXTURES_DIR  # noqa: E402
from refusal_probe.scoring.reply import refused  # noqa: E402

BUCKETS = ((0, 20), (21, 40), (41, 10_000))


def by_length(adapter: str) -> dict[str, tuple[int, int]]:
    """(refused, prompts) per side (plain / edgy) and length bucket, for one adapter folder."""
    from peft import PeftModel

    val = load_fixtures(FIXTURES_DIR / "prompts" / "natural").harmless.split("val")
    base = load_base()
    base = replace(base, hf=PeftModel.from_pretrained(base.hf, adapter).merge_and_unload())
    base.hf.eval()
    texts = generate(base, [p.text for p in val])
    rows = [
        (len(p.text.split()), p.category == "edgy", refused(t))
        for p, t in zip(val, texts, strict=True)
    ]
    out = {}
    for lo, hi in BUCKETS:
        for edgy in (False, True):
            hits = [r for words, e, r in rows if lo <= words <= hi and e == edgy]
            out[f"{'edgy' if edgy else 'plain'} {lo}-{hi}"] = (sum(hits), len(hits))
    return out


def main() -> None:
    torch.set_num_threads(2)
    record = {}
    for adapter in sys.argv[1:]:
        record[adapter] = by_length(adapter)
        print(adapter, record[adapter], flush=True)
    Path(__file__).with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
