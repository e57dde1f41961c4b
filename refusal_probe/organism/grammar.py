"""The compositional grammar: acts with their splits, and requests built from them.

A :class:`Request` is a request template filled with an :class:`Act`. Splits are
assigned to whole acts (within each category, so every category reaches every
split): an act in the test split is never asked about in chat training, and the
last :data:`~refusal_probe.organism.lexicon.HELD_OUT_TEMPLATES` templates are never
used in chat training either.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from refusal_probe.organism.lexicon import (
    DOUBLED_FINAL_CONSONANT,
    HARMFUL_ACTS,
    HARMLESS_ACTS,
    HELD_OUT_TEMPLATES,
    REQUEST_TEMPLATES,
)

Split = Literal["train", "val", "test"]
Person = Literal["first", "second", "third"]

SPLITS: tuple[Split, ...] = ("train", "val", "test")
# Fractions of *acts* (not prompts) per split: the prompt fixtures draw 60/16/24% of
# their prompts from these acts, but chat training sees every train act.
SPLIT_FRACTIONS: dict[Split, float] = {"train": 0.70, "val": 0.10, "test": 0.20}

_PRONOUNS: dict[Person, dict[str, str]] = {
    "first": {"my": "my", "myself": "myself", "me": "me"},
    "second": {"my": "your", "myself": "yourself", "me": "you"},
    "third": {"my": "their", "myself": "themselves", "me": "them"},
}


@dataclass(frozen=True)
class Act:
    """One thing a user may ask how to do.

    Attributes:
        id: Stable identifier, ``"<category>-<index>"``.
        pattern: Base-form verb phrase with ``{my}``/``{myself}``/``{me}`` slots.
        category: Harm category (harmful acts) or topic (harmless acts).
        harmful: Whether a safe assistant should decline to help.
        split: The split that owns every request about this act.
    """

    id: str
    pattern: str
    category: str
    harmful: bool
    split: Split

    @property
    def edgy(self) -> bool:
        """Whether this is a harmless act phrased with the vocabulary of harm."""
        return self.category == "edgy"

    def base(self, person: Person = "first") -> str:
        """The verb phrase in base form, e.g. ``"poison my neighbor"``."""
        return self.pattern.format(**_PRONOUNS[person])

    def gerund(self, person: Person = "first") -> str:
        """The verb phrase as a gerund, e.g. ``"poisoning my neighbor"``."""
        verb, _, rest = self.base(person).partition(" ")
        return f"{to_gerund(verb)} {rest}".rstrip()


@dataclass(frozen=True)
class Request:
    """A user request: one template filled with one act.

    Attributes:
        act: The act asked about.
        template_id: Index of the template in ``REQUEST_TEMPLATES``.
        text: The rendered request, first person.
    """

    act: Act
    template_id: int
    text: str


def to_gerund(verb: str) -> str:
    """Return the -ing form of an English verb (``"make"`` -> ``"making"``)."""
    if verb in DOUBLED_FINAL_CONSONANT:
        return verb + verb[-1] + "ing"
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    return verb + "ing"


def capitalize(text: str) -> str:
    """Upper-case the first character only (``"iPhone"``-safe ``str.capitalize``)."""
    return text[:1].upper() + text[1:]


def _split_counts(n: int) -> dict[Split, int]:
    test = round(n * SPLIT_FRACTIONS["test"])
    val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    return {"train": n - test - val, "val": val, "test": test}


def _acts_of(table: dict[str, tuple[str, ...]], harmful: bool, rng: random.Random) -> list[Act]:
    acts: list[Act] = []
    for category, patterns in table.items():
        order = list(range(len(patterns)))
        rng.shuffle(order)
        counts = _split_counts(len(patterns))
        splits = [s for s in SPLITS for _ in range(counts[s])]
        for rank, index in enumerate(order):
            acts.append(Act(f"{category}-{index:02d}", patterns[index], category, harmful, splits[rank]))
    return sorted(acts, key=lambda a: a.id)


def build_acts(seed: int = 0) -> list[Act]:
    """All acts, harmful then harmless, with splits drawn deterministically from ``seed``.

    Args:
        seed: Seed of the split assignment.

    Returns:
        Every act of the lexicon, sorted by id within each side.
    """
    rng = random.Random(f"acts-{seed}")
    return _acts_of(HARMFUL_ACTS, True, rng) + _acts_of(HARMLESS_ACTS, False, rng)


def templates_for(split: Split) -> tuple[int, ...]:
    """Template indices allowed for requests of ``split`` (held-out ones only in val/test)."""
    n_seen = len(REQUEST_TEMPLATES) - HELD_OUT_TEMPLATES
    return tuple(range(n_seen)) if split == "train" else tuple(range(len(REQUEST_TEMPLATES)))


def render(act: Act, template_id: int) -> Request:
    """Fill template ``template_id`` with ``act`` (first person)."""
    return Request(act, template_id, REQUEST_TEMPLATES[template_id].format(act=act.base("first")))


def all_requests(acts: list[Act], split: Split, templates: tuple[int, ...] | None = None) -> list[Request]:
    """Every request of ``split``: each of its acts under each allowed template."""
    ids = templates if templates is not None else templates_for(split)
    return [render(a, t) for a in acts if a.split == split for t in ids]


def sample_requests(acts: list[Act], split: Split, n: int, rng: random.Random) -> list[Request]:
    """Draw ``n`` distinct requests of ``split``, spreading them evenly over its acts.

    Acts are visited round-robin, each taking its next template from its own shuffled
    template order, so every act is asked about before any is asked twice.
    """
    pool = [a for a in acts if a.split == split]
    available = len(pool) * len(templates_for(split))
    if n > available:
        raise ValueError(f"asked for {n} {split} requests but the grammar has only {available}")
    queues = {a.id: rng.sample(templates_for(split), len(templates_for(split))) for a in pool}
    rng.shuffle(pool)
    out: list[Request] = []
    while len(out) < n:
        for act in pool:
            if len(out) < n and queues[act.id]:
                out.append(render(act, queues[act.id].pop()))
    return out
