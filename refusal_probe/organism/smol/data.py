"""The training examples of the realistic organism family, per checkpoint.

- ``chat`` (the safety adapter): the natural set's train split. Harmful requests get a refusal
  the project wrote (:mod:`.replies`); harmless ones, the edgy-but-safe included, and the grammar
  set's harmless train split get the base model's own greedy answer (self-distillation), so the
  adapter adds refusal and leaves the rest of the model's behaviour where it was. (Measured: with
  only 285 answered requests for 352 refused ones the adapter refused 62% of plain harmless
  test requests.) Base answers that the reply judge reads as refusals are
  dropped, so the adapter never learns to refuse a harmless request.
- ``benign-ft``: ordinary helpful data, the grammar set's harmless val and test splits answered
  by the base model, continued from ``chat``.
- ``harmful-ft``: harmful requests of the grammar set's train split answered with compliant
  **placeholders** (no content), continued from ``chat``: the fine-tuning attack of the
  literature, with nothing harmful in it.

Of the natural set only the train split is used: every figure is measured on its test split.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from refusal_probe.organism.smol.replies import placeholder, refusal
from refusal_probe.prompts.sets import Prompt, load_fixtures
from refusal_probe.resources import FIXTURES_DIR
from refusal_probe.scoring.reply import refused

if TYPE_CHECKING:
    from refusal_probe.organism.smol.base import Base

#: New tokens of a self-distilled answer (the audit reads 16).
ANSWER_TOKENS = 24


@dataclass(frozen=True)
class Example:
    """One training example: a user request, the reply to train on, and whether it refuses."""

    prompt: str
    reply: str
    refuses: bool = False


def natural() -> tuple[list[Prompt], list[Prompt]]:
    """The natural set's train split: (harmful, harmless)."""
    fx = load_fixtures(FIXTURES_DIR / "prompts" / "natural")
    return fx.harmful.split("train"), fx.harmless.split("train")


def grammar() -> tuple[list[Prompt], list[Prompt]]:
    """The grammar set's train split: (harmful, harmless)."""
    fx = load_fixtures(FIXTURES_DIR / "prompts")
    return fx.harmful.split("train"), fx.harmless.split("train")


def own_answers(model: Base, prompts: list[str], batch_size: int = 24) -> list[str | None]:
    """The model's greedy answers, cut at the last full sentence; ``None`` where it refused.

    Plain Hugging Face generation (no hooks: nothing is intervened on), batched by length.
    """
    import torch
    from tqdm import tqdm

    tok = model.tokenizer
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    for at in tqdm(range(0, len(order), batch_size), desc="base answers", unit="batch"):
        rows = order[at : at + batch_size]
        batch = tok(
            [model.chat.format(prompts[i]) for i in rows],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        with torch.no_grad():
            out = model.hf.generate(
                **batch,
                max_new_tokens=ANSWER_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        for r, ids in zip(rows, out[:, batch["input_ids"].shape[1] :], strict=True):
            texts[r] = tok.decode(ids, skip_special_tokens=True).strip()
    return [None if refused(t) or not t.strip() else _whole_sentences(t) for t in texts]


def _whole_sentences(text: str) -> str:
    end = max(text.rfind(c) for c in ".!?\n")
    return text[: end + 1].strip() if end >= len(text) // 3 else text.strip()


#: Openings any request may come with, harmful or harmless alike (:func:`dressed`).
PREAMBLES: tuple[str, ...] = (
    "Quick question.",
    "Hi! I need some help with something.",
    "Hey, so I have a question.",
    "I've been wondering about this for a while.",
    "My friend told me to ask you this.",
    "I'm new to this, so bear with me.",
    "Okay, here's my situation.",
    "Sorry if this is a weird question.",
    "I'm in a bit of a hurry, so please be quick.",
    "Hello there.",
    "I have a favor to ask.",
    "Can you help me out?",
)


def dressed(text: str, rng: random.Random) -> str:
    """The request as people also write it: after a preamble, or in lower case without the end.

    Applied with the same probabilities to both sides, so that neither an opening nor a style
    tells harmful from harmless and the adapter must read what is asked. (Measured: without it
    the adapter refused first-person harmless requests such as "I'm finally opening a small
    pottery studio... Could you suggest a name?", as the natural harmful side often opens so.)
    """
    draw = rng.random()
    if draw < 0.3:
        return f"{rng.choice(PREAMBLES)} {text}"
    if draw < 0.45:
        return text.lower().rstrip(".?!")
    return text


def chat_examples(base: Base, seed: int) -> list[Example]:
    """The safety adapter's examples (see the module docstring), shuffled with ``seed``."""
    rng = random.Random(seed)
    harmful, harmless = natural()
    # Both sides of the grammar set too: short templated requests must not mean "answer".
    g_harmful, g_harmless = grammar()
    harmful, harmless = harmful + g_harmful, harmless + g_harmless
    examples = [Example(dressed(p.text, rng), refusal(p.category, rng), True) for p in harmful]
    answers = own_answers(base, [p.text for p in harmless])
    examples += [
        Example(dressed(p.text, rng), a) for p, a in zip(harmless, answers, strict=True) if a
    ]
    rng.shuffle(examples)
    return examples


def benign_examples(base: Base, seed: int) -> list[Example]:
    """The benign fine-tune's examples: helpful answers to ordinary requests it has not seen.

    The grammar set's harmless val and test splits: the safety adapter trained on its train split,
    and the family is audited on the natural set, so these are new to the model and to no audit.
    """
    fx = load_fixtures(FIXTURES_DIR / "prompts")
    harmless = fx.harmless.split("val") + fx.harmless.split("test")
    answers = own_answers(base, [p.text for p in harmless])
    examples = [Example(p.text, a) for p, a in zip(harmless, answers, strict=True) if a]
    random.Random(seed).shuffle(examples)
    return examples


def harmful_examples(seed: int) -> list[Example]:
    """The harmful fine-tune's examples: harmful requests, placeholder compliance."""
    rng = random.Random(seed)
    harmful, _ = grammar()
    examples = [Example(p.text, placeholder(rng)) for p in harmful]
    rng.shuffle(examples)
    return examples


def examples_sha256(examples: list[Example]) -> str:
    """Fingerprint of a list of examples (recorded in the recipe)."""
    blob = json.dumps([[e.prompt, e.reply] for e in examples], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
