"""Rebuild the organism family: corpora -> tokenizer -> four checkpoints + recipes.

``build_family`` trains, in order, organism-base (pretraining), organism-chat (safety
SFT on top), organism-chat-benign-ft and organism-chat-harmful-ft (both fine-tuned
from organism-chat), measures each on the test split and saves it as a Hugging Face
folder with a ``recipe.json`` beside the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import platform
import shutil
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
from refusal_probe.organism.train import (
    ModelShape,
    Schedule,
    chat_finetune,
    new_model,
    pack_documents,
    pretrain,
)

# Torch threads of a rebuild. Float reductions depend on the thread count, so the shipped
# weights are reproduced bit for bit only with the count they were trained with (recorded in
# each recipe.json under "environment").
THREADS = 1
CHECKPOINTS = ("organism-base", "organism-chat", "organism-chat-benign-ft", "organism-chat-harmful-ft")


@dataclass(frozen=True)
class Recipe:
    """Every knob of a family rebuild; the defaults are the shipped family.

    Attributes:
        seed: Seed of the splits, the corpora, the initialisation and the data order.
        vocab_size: BPE vocabulary size, special tokens included.
        n_docs: Pretraining documents (one or two episodes each).
        seq_len: Packed pretraining sequence length.
        replies_per_request: Refusal/answer phrasings drawn per safety-SFT request.
        n_generic: Open-ended harmless instructions in each chat stage.
        n_impossible: Impossible (declined for lack of ability) requests in each chat stage.
        n_attack: Harmful requests in the fine-tuning attack (Qi et al. used 10-100).
        shape: Architecture.
        pretrain: Pretraining schedule (organism-base).
        instruct: Instruction-tuning schedule (an intermediate model, not shipped); trains
            only the top blocks, which learn the chat format and the wording of replies.
        safety: Safety SFT schedule (organism-chat); trains only the middle blocks, which
            learn when to refuse.
        benign: Benign fine-tune schedule (all blocks).
        attack: Harmful fine-tune schedule (all blocks).
    """

    seed: int = 2
    vocab_size: int = 2048
    n_docs: int = 50_000
    seq_len: int = 128
    replies_per_request: int = 2
    n_generic: int = 1500
    n_impossible: int = 800
    n_attack: int = 64
    shape: ModelShape = field(default_factory=ModelShape)
    pretrain: Schedule = field(default_factory=lambda: Schedule(lr=3e-3, epochs=1.0, batch_size=32))
    instruct: Schedule = field(default_factory=lambda: Schedule(
        lr=1e-3, epochs=3.0, batch_size=32, freeze_embeddings=True, frozen_layers=(0, 1, 2)))
    safety: Schedule = field(default_factory=lambda: Schedule(
        lr=1e-3, epochs=3.0, batch_size=32, freeze_embeddings=True, frozen_layers=(0, 3, 4),
        drop_one=0.5, drop_mlp_layers=(4,)))
    benign: Schedule = field(default_factory=lambda: Schedule(lr=2e-4, epochs=1.0, batch_size=32))
    attack: Schedule = field(default_factory=lambda: Schedule(lr=5e-4, epochs=5.0, batch_size=8))


# The recipe fields each checkpoint depends on (its own stage and its ancestors').
_BASE_FIELDS = ("seed", "vocab_size", "n_docs", "seq_len", "shape", "pretrain")
_CHAT_FIELDS = (*_BASE_FIELDS, "replies_per_request", "n_generic", "n_impossible", "instruct", "safety")
LINEAGE: dict[str, tuple[str, ...]] = {
    "organism-base": _BASE_FIELDS,
    "organism-chat": _CHAT_FIELDS,
    "organism-chat-benign-ft": (*_CHAT_FIELDS, "benign"),
    "organism-chat-harmful-ft": (*_CHAT_FIELDS, "n_attack", "attack"),
}


def _lineage(recipe: dict[str, object], fields: tuple[str, ...]) -> dict[str, object]:
    """``fields`` of a (saved or live) recipe as plain JSON, nested settings with their defaults
    filled in, so a recipe saved before a setting existed compares equal at that setting's default."""
    kinds = {f.name: f.type for f in dataclasses.fields(Recipe)}
    out: dict[str, object] = {}
    for key in fields:
        value = recipe.get(key)
        if isinstance(value, dict):
            cls = ModelShape if kinds[key] in (ModelShape, "ModelShape") else Schedule
            value = asdict(cls(**value))
        out[key] = json.loads(json.dumps(value))
    return out


@dataclass(frozen=True)
class Corpora:
    """All training text of one rebuild, derived from the grammar and the seed."""

    acts: list[Act]
    documents: list[str]
    instruct: list[ChatExample]
    safety: list[ChatExample]
    benign: list[ChatExample]
    attack: list[ChatExample]


def build_corpora(recipe: Recipe) -> Corpora:
    """Generate every corpus of ``recipe`` (deterministic, about a second)."""
    acts = build_acts(recipe.seed)
    return Corpora(
        acts=acts,
        documents=corpus.pretraining_documents(acts, recipe.n_docs, len(REQUEST_TEMPLATES), recipe.seed),
        instruct=corpus.instruct_examples(acts, recipe.n_generic, recipe.n_impossible, recipe.seed),
        safety=corpus.safety_sft_examples(acts, recipe.replies_per_request, recipe.n_generic,
                                          recipe.n_impossible, recipe.seed),
        benign=corpus.benign_ft_examples(acts, recipe.seed),
        attack=corpus.harmful_ft_examples(acts, recipe.n_attack, recipe.seed),
    )


def _chat_texts(examples: list[ChatExample]) -> list[str]:
    return [f"{e.prompt}\n{e.response}" for e in examples]


def build_tokenizer(corpora: Corpora, recipe: Recipe) -> PreTrainedTokenizerFast:
    """Train the organism tokenizer on every corpus of the rebuild."""
    text = corpora.documents + _chat_texts(corpora.instruct + corpora.safety + corpora.benign + corpora.attack)
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


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the tokenizer's model and settings, not its padding/truncation state (which
    calling it with ``padding=True`` changes)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    return fingerprint([json.dumps(spec, sort_keys=True)])


def save_checkpoint(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path,
                    record: dict[str, object]) -> None:
    """Write a loadable Hugging Face folder plus ``recipe.json``, atomically.

    The folder is written beside ``path`` and renamed into place, so an interrupted
    rebuild never leaves a checkpoint that looks complete.
    """
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.config.architectures = ["LlamaForCausalLM"]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=evaluate.MAX_NEW_TOKENS,
    )
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging, save_jinja_files=False)
    (staging / "recipe.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    staging.rename(path)


def _environment() -> dict[str, object]:
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


class FamilyBuilder:
    """Trains the four checkpoints in order, saving and measuring each."""

    def __init__(self, recipe: Recipe, out: Path, log: bool = True, resume: bool = False) -> None:
        """Prepare corpora, tokenizer and fixtures for ``recipe``; nothing is trained yet.

        With ``resume``, a checkpoint already under ``out`` that was built from the same
        recipe and tokenizer is loaded instead of retrained.
        """
        self.recipe, self.out, self.log, self.resume = recipe, out, log, resume
        self.corpora = build_corpora(recipe)
        self.tokenizer = build_tokenizer(self.corpora, recipe)
        self.fixtures = build_fixtures(self.corpora.acts, token_counter(self.tokenizer), recipe.seed)
        self.prompts = prompt_sets(self.fixtures)
        self.figures: dict[str, dict[str, float]] = {}

    def _say(self, message: str) -> None:
        if self.log:
            print(message, flush=True)

    def _finish(self, name: str, model: LlamaForCausalLM, parent: str | None, stages: list[dict[str, object]],
                seconds: float) -> None:
        start = time.perf_counter()
        figures = evaluate.measure(model, self.tokenizer, self.prompts).as_dict()
        self.figures[name] = figures
        record = {
            # the audits' default prompt set for this model: the grammar set it was trained on
            "name": name, "prompt_set": "grammar", "parent": parent, "seed": self.recipe.seed,
            "stages": stages,
            "recipe": asdict(self.recipe), "training_seconds": round(seconds, 1),
            "evaluation_seconds": round(time.perf_counter() - start, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "tokenizer_sha256": tokenizer_fingerprint(self.tokenizer),
            "fixtures_sha256": {k: fingerprint([json.dumps(r, sort_keys=True) for r in v])
                                for k, v in self.fixtures.items()},
            "figures_test_split": figures, "environment": _environment(),
        }
        save_checkpoint(model, self.tokenizer, self.out / name, record)
        self._say(f"{name}: trained in {seconds:.0f}s; {json.dumps(figures)}")

    def _chat(self, parent: LlamaForCausalLM, kind: str, examples: list[ChatExample], schedule: Schedule,
              seed: int) -> tuple[LlamaForCausalLM, dict[str, object]]:
        model = copy.deepcopy(parent)
        start, cpu = time.perf_counter(), time.process_time()
        self._say(f"{kind}: {len(examples)} examples")
        losses = chat_finetune(model, self.tokenizer, examples, schedule, seed, log=self._say if self.log else None)
        stage = {"kind": kind, "examples": len(examples), "data_sha256": fingerprint(_chat_texts(examples)),
                 "schedule": asdict(schedule), "seconds": round(time.perf_counter() - start, 1),
                 "cpu_seconds": round(time.process_time() - cpu, 1),
                 "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4)}
        return model, stage

    def _base(self) -> tuple[LlamaForCausalLM, dict[str, object]]:
        r = self.recipe
        model = new_model(r.shape, self.tokenizer, r.seed)
        start, cpu = time.perf_counter(), time.process_time()
        rows = pack_documents(self.tokenizer, self.corpora.documents, r.seq_len)
        losses = pretrain(model, self.tokenizer, rows, r.pretrain, r.seed, log=self._say if self.log else None)
        stage = {"kind": "pretrain", "documents": len(self.corpora.documents), "tokens": rows.numel(),
                 "data_sha256": fingerprint(self.corpora.documents), "schedule": asdict(r.pretrain),
                 "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
                 "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4)}
        return model, stage

    def build(self) -> dict[str, dict[str, float]]:
        """Train, measure and save the whole family; returns the figures per checkpoint."""
        r, c, seed = self.recipe, self.corpora, self.recipe.seed
        base = self._reused("organism-base")
        if base is None:
            base, pre = self._base()
            self._finish("organism-base", base, None, [pre], pre["seconds"])
        chat = self._reused("organism-chat")
        if chat is None:
            instruct, inst = self._chat(base, "instruct_sft", c.instruct, r.instruct, seed + 1)
            chat, safe = self._chat(instruct, "safety_sft", c.safety, r.safety, seed + 2)
            self._finish("organism-chat", chat, "organism-base", [inst, safe], inst["seconds"] + safe["seconds"])
        for name, kind, examples, schedule, offset in (
            ("organism-chat-benign-ft", "benign_ft", c.benign, r.benign, 3),
            ("organism-chat-harmful-ft", "harmful_ft", c.attack, r.attack, 4),
        ):
            if self._reused(name) is None:
                model, stage = self._chat(chat, kind, examples, schedule, seed + offset)
                self._finish(name, model, "organism-chat", [stage], stage["seconds"])
        return self.figures

    def _reused(self, name: str) -> LlamaForCausalLM | None:
        """The saved ``name`` when resuming and it was built from this recipe and tokenizer."""
        path = self.out / name
        if not (self.resume and (path / "recipe.json").is_file()):
            return None
        saved = json.loads((path / "recipe.json").read_text(encoding="utf-8"))
        fields = LINEAGE[name]
        same = (_lineage(saved.get("recipe", {}), fields) == _lineage(asdict(self.recipe), fields)
                and saved.get("tokenizer_sha256") == tokenizer_fingerprint(self.tokenizer))
        if not same:
            self._say(f"{name}: saved checkpoint is from another recipe; retraining")
            return None
        self.figures[name] = saved["figures_test_split"]
        self._say(f"{name}: reused {path}")
        return LlamaForCausalLM.from_pretrained(path).eval()


def build_family(recipe: Recipe, out: Path, log: bool = True, resume: bool = False,
                 threads: int = THREADS) -> dict[str, dict[str, float]]:
    """Rebuild the four checkpoints of ``recipe`` under ``out`` with ``threads`` torch threads.

    With ``resume``, checkpoints already under ``out`` from the same recipe are kept.
    """
    torch.set_num_threads(threads)
    return FamilyBuilder(recipe, out, log, resume).build()
