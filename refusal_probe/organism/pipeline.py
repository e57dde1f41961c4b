"""Rebuild the organism family: corpora -> tokenizer -> four checkpoints + recipes.

``build_family`` trains, in order, organism-base (pretraining), organism-chat (safety
SFT on top), organism-chat-benign-ft and organism-chat-harmful-ft (both fine-tuned
from organism-chat), measures each on the test split and saves it as a Hugging Face
folder with a ``recipe.json`` beside the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from refusal_probe.organism import corpus, evaluate
from refusal_probe.organism.corpus import ChatExample
from refusal_probe.organism.fixtures import Record, TokenCounter, build_fixtures, texts
from refusal_probe.organism.grammar import Act, build_acts
from refusal_probe.organism.lexicon import REQUEST_TEMPLATES
from refusal_probe.organism.tokenizer import train_tokenizer
from refusal_probe.organism.train import ModelShape, Schedule, chat_finetune, new_model, pack_documents, pretrain

THREADS = 2
CHECKPOINTS = ("organism-base", "organism-chat", "organism-chat-benign-ft", "organism-chat-harmful-ft")


@dataclass(frozen=True)
class Recipe:
    """Every knob of a family rebuild; the defaults are the shipped family.

    Attributes:
        seed: Seed of the splits, the corpora, the initialisation and the data order.
        vocab_size: BPE vocabulary size, special tokens included.
        n_docs: Pretraining documents (3-6 sentences each).
        seq_len: Packed pretraining sequence length.
        replies_per_request: Refusal/answer phrasings drawn per safety-SFT request.
        n_generic: Open-ended harmless instructions mixed into the safety SFT.
        n_attack: Harmful requests in the fine-tuning attack (Qi et al. used 10-100).
        shape: Architecture.
        pretrain: Pretraining schedule.
        chat: Safety SFT schedule (organism-chat).
        benign: Benign fine-tune schedule.
        attack: Harmful fine-tune schedule.
    """

    seed: int = 0
    vocab_size: int = 2048
    n_docs: int = 24_000
    seq_len: int = 128
    replies_per_request: int = 2
    n_generic: int = 1500
    n_attack: int = 64
    shape: ModelShape = field(default_factory=ModelShape)
    pretrain: Schedule = field(default_factory=lambda: Schedule(lr=3e-3, epochs=1.0, batch_size=32))
    chat: Schedule = field(default_factory=lambda: Schedule(lr=1e-3, epochs=2.0, batch_size=32,
                                                            freeze_embeddings=True))
    benign: Schedule = field(default_factory=lambda: Schedule(lr=5e-4, epochs=2.0, batch_size=32))
    attack: Schedule = field(default_factory=lambda: Schedule(lr=5e-4, epochs=5.0, batch_size=8))


@dataclass(frozen=True)
class Corpora:
    """All training text of one rebuild, derived from the grammar and the seed."""

    acts: list[Act]
    documents: list[str]
    safety: list[ChatExample]
    benign: list[ChatExample]
    attack: list[ChatExample]


def build_corpora(recipe: Recipe) -> Corpora:
    """Generate every corpus of ``recipe`` (deterministic, about a second)."""
    acts = build_acts(recipe.seed)
    return Corpora(
        acts=acts,
        documents=corpus.pretraining_documents(acts, recipe.n_docs, len(REQUEST_TEMPLATES), recipe.seed),
        safety=corpus.safety_sft_examples(acts, recipe.replies_per_request, recipe.n_generic, recipe.seed),
        benign=corpus.benign_ft_examples(acts, recipe.seed),
        attack=corpus.harmful_ft_examples(acts, recipe.n_attack, recipe.seed),
    )


def _chat_texts(examples: list[ChatExample]) -> list[str]:
    return [f"{e.prompt}\n{e.response}" for e in examples]


def build_tokenizer(corpora: Corpora, recipe: Recipe) -> PreTrainedTokenizerFast:
    """Train the organism tokenizer on every corpus of the rebuild."""
    text = corpora.documents + _chat_texts(corpora.safety + corpora.benign + corpora.attack)
    return train_tokenizer(text, recipe.vocab_size)


def token_counter(tokenizer: PreTrainedTokenizerFast) -> TokenCounter:
    """Number of tokens of a user text under ``tokenizer`` (no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_sets(fixtures: dict[str, list[Record]]) -> dict[str, dict[str, list[str]]]:
    """``sets[side][split]`` texts from the harmful/harmless fixture records."""
    return {side: {split: texts(fixtures[f"{side}.jsonl"], split) for split in ("train", "val", "test")}
            for side in ("harmful", "harmless")}


def fingerprint(items: list[str]) -> str:
    """sha256 of the texts, joined by newlines."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def save_checkpoint(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path,
                    record: dict[str, object]) -> None:
    """Write a loadable Hugging Face folder plus ``recipe.json``."""
    model.config.architectures = ["LlamaForCausalLM"]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=evaluate.MAX_NEW_TOKENS,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path, save_jinja_files=False)
    (path / "recipe.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _environment() -> dict[str, object]:
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


class FamilyBuilder:
    """Trains the four checkpoints in order, saving and measuring each."""

    def __init__(self, recipe: Recipe, out: Path, log: bool = True) -> None:
        """Prepare corpora, tokenizer and fixtures for ``recipe``; nothing is trained yet."""
        self.recipe, self.out, self.log = recipe, out, log
        self.corpora = build_corpora(recipe)
        self.tokenizer = build_tokenizer(self.corpora, recipe)
        self.fixtures = build_fixtures(self.corpora.acts, token_counter(self.tokenizer), recipe.seed)
        self.prompts = prompt_sets(self.fixtures)
        self.figures: dict[str, dict[str, float]] = {}

    def _say(self, message: str) -> None:
        if self.log:
            print(message, flush=True)

    def _finish(self, name: str, model: LlamaForCausalLM, parent: str | None, stage: dict[str, object],
                seconds: float, losses: list[float]) -> None:
        figures = evaluate.measure(model, self.tokenizer, self.prompts).as_dict()
        self.figures[name] = figures
        record = {
            "name": name, "parent": parent, "seed": self.recipe.seed, "stage": stage,
            "recipe": asdict(self.recipe), "training_seconds": round(seconds, 1),
            "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
            "parameters": sum(p.numel() for p in model.parameters()),
            "tokenizer_sha256": fingerprint([self.tokenizer.backend_tokenizer.to_str()]),
            "fixtures_sha256": {k: fingerprint([json.dumps(r, sort_keys=True) for r in v])
                                for k, v in self.fixtures.items()},
            "figures_test_split": figures, "environment": _environment(),
        }
        save_checkpoint(model, self.tokenizer, self.out / name, record)
        self._say(f"{name}: {seconds:.0f}s {json.dumps(figures)}")

    def _chat_stage(self, name: str, parent: LlamaForCausalLM, examples: list[ChatExample],
                    schedule: Schedule, seed: int) -> LlamaForCausalLM:
        model = copy.deepcopy(parent)
        start = time.perf_counter()
        losses = chat_finetune(model, self.tokenizer, examples, schedule, seed)
        stage = {"kind": "chat_sft", "examples": len(examples),
                 "data_sha256": fingerprint(_chat_texts(examples)), "schedule": asdict(schedule)}
        parent_name = "organism-base" if name == "organism-chat" else "organism-chat"
        self._finish(name, model, parent_name, stage, time.perf_counter() - start, losses)
        return model

    def build(self) -> dict[str, dict[str, float]]:
        """Train, measure and save the whole family; returns the figures per checkpoint."""
        r, seed = self.recipe, self.recipe.seed
        base = new_model(r.shape, self.tokenizer, seed)
        start = time.perf_counter()
        rows = pack_documents(self.tokenizer, self.corpora.documents, r.seq_len)
        losses = pretrain(base, self.tokenizer, rows, r.pretrain, seed)
        stage = {"kind": "pretrain", "documents": len(self.corpora.documents), "tokens": rows.numel(),
                 "data_sha256": fingerprint(self.corpora.documents), "schedule": asdict(r.pretrain)}
        self._finish("organism-base", base, None, stage, time.perf_counter() - start, losses)
        chat = self._chat_stage("organism-chat", base, self.corpora.safety, r.chat, seed + 1)
        self._chat_stage("organism-chat-benign-ft", chat, self.corpora.benign, r.benign, seed + 2)
        self._chat_stage("organism-chat-harmful-ft", chat, self.corpora.attack, r.attack, seed + 3)
        return self.figures


def build_family(recipe: Recipe, out: Path, log: bool = True) -> dict[str, dict[str, float]]:
    """Rebuild the four checkpoints of ``recipe`` under ``out`` (2 CPU threads)."""
    torch.set_num_threads(THREADS)
    return FamilyBuilder(recipe, out, log).build()
