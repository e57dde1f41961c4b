"""The prompt fixtures: harmful/harmless prompts, matched pairs and jailbreak variants.

All four files are generated from the grammar and are deterministic given the seed
(and, for the pairs, the organism tokenizer, itself deterministic given the seed).
Records follow the schema of ``fixtures/prompts/README.md`` exactly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from refusal_probe.organism.grammar import (
    SPLITS,
    Act,
    Request,
    Split,
    render,
    sample_requests,
    templates_for,
)
from refusal_probe.prompts.variants import wrap

Record = dict[str, str]
TokenCounter = Callable[[str], int]

PROMPTS_PER_SPLIT: dict[Split, int] = {"train": 240, "val": 64, "test": 96}
PAIRS_PER_SPLIT: dict[Split, int] = {"train": 16, "val": 24, "test": 64}


def _records(requests: Sequence[Request], prefix: str, offset: int) -> list[Record]:
    return [
        {"id": f"{prefix}-{offset + i + 1:04d}", "text": r.text, "category": r.act.category, "split": r.act.split}
        for i, r in enumerate(requests)
    ]


def prompt_records(acts: list[Act], harmful: bool, seed: int) -> list[Record]:
    """The records of ``harmful.jsonl`` (``harmful=True``) or ``harmless.jsonl``.

    Requests are spread evenly over the acts of each split; train requests use the
    train templates only, val and test requests any template.
    """
    rng = random.Random(f"fixtures-{'hf' if harmful else 'hl'}-{seed}")
    side = [a for a in acts if a.harmful == harmful]
    records: list[Record] = []
    for split in SPLITS:
        requests = sample_requests(side, split, PROMPTS_PER_SPLIT[split], rng)
        records += _records(requests, "hf" if harmful else "hl", len(records))
    return records


def _pair_for(harmful: Act, harmless: list[Act], count: TokenCounter, rng: random.Random) -> Record | None:
    templates = list(templates_for(harmful.split))
    rng.shuffle(templates)
    for template in templates:
        target = render(harmful, template).text
        matches = [a for a in harmless if count(render(a, template).text) == count(target)]
        if matches:
            other = rng.choice(matches)
            return {"harmful": target, "harmless": render(other, template).text,
                    "split": harmful.split, "template": f"t{template:02d}"}
    return None


def pair_records(acts: list[Act], count: TokenCounter, seed: int) -> list[Record]:
    """Matched pairs for activation patching: one template, the act slot swapped.

    Both texts of a pair come from acts of the same split and, whenever the grammar
    allows it, have the same number of tokens under ``count`` (the organism
    tokenizer); pairs that cannot be matched exactly are skipped.
    """
    rng = random.Random(f"fixtures-pairs-{seed}")
    records: list[Record] = []
    for split in ("test", "val", "train"):
        harmful = [a for a in acts if a.harmful and a.split == split]
        harmless = [a for a in acts if not a.harmful and a.split == split]
        made: list[Record] = []
        while len(made) < PAIRS_PER_SPLIT[split]:
            pair = _pair_for(rng.choice(harmful), harmless, count, rng)
            if pair is not None and pair not in made:
                made.append(pair)
        records += made
    return [{"id": f"pair-{i + 1:04d}", **r} for i, r in enumerate(records)]


def jailbreak_records(harmful: list[Record], seed: int) -> list[Record]:
    """One role-play, one encoding and one context variant of every harmful test prompt.

    The ``suffix`` family is part of the schema but left empty here (a red-team fills it).
    """
    rng = random.Random(f"fixtures-jailbreaks-{seed}")
    tests = [r for r in harmful if r["split"] == "test"]
    records = [
        {"base_id": r["id"], "family": family, "text": wrap(family, r["text"], rng)}
        for family in ("roleplay", "encoding", "context")
        for r in tests
    ]
    return [{"id": f"jb-{i + 1:04d}", **r} for i, r in enumerate(records)]


def kept_suffix_records(old: Sequence[Record], harmful: Sequence[Record]) -> list[Record]:
    """Red-team ``suffix`` records of an existing ``jailbreaks.jsonl`` that still apply.

    The grammar does not generate suffixes; a red-team appends them. A suffix record is
    kept when its ``base_id`` is still a harmful test prompt and its text still starts
    with that prompt's text; records whose base prompt changed are dropped.
    """
    tests = {r["id"]: r["text"] for r in harmful if r["split"] == "test"}
    return [r for r in old if r.get("family") == "suffix" and str(r.get("text", "")).startswith(
        tests.get(str(r.get("base_id")), "\0"))]


def build_fixtures(acts: list[Act], count: TokenCounter, seed: int) -> dict[str, list[Record]]:
    """All fixture files, keyed by file name."""
    harmful = prompt_records(acts, True, seed)
    return {
        "harmful.jsonl": harmful,
        "harmless.jsonl": prompt_records(acts, False, seed),
        "pairs.jsonl": pair_records(acts, count, seed),
        "jailbreaks.jsonl": jailbreak_records(harmful, seed),
    }


def write_jsonl(path: Path, records: Sequence[Record]) -> None:
    """Write ``records`` as UTF-8 JSON Lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Record]:
    """Read a JSON Lines file written by :func:`write_jsonl`."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def texts(records: Sequence[Record], split: Split) -> list[str]:
    """The ``text`` of every record of ``split``."""
    return [r["text"] for r in records if r["split"] == split]
