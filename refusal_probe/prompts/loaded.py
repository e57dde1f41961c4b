"""A user's prompt sets as loaded: the two sides, and how they were read and split.

:class:`LoadedPrompts` carries the same :class:`~refusal_probe.prompts.sets.PromptSet` values
the shipped fixtures give (so the engine uses them unchanged) and everything an audit record
needs to say where they came from: each source's layout (which column was read as what), the
split seed, fractions and assignment fingerprint, the prompts cut to a length limit, and the
repeated texts dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refusal_probe.prompts.formats import SIDES, Layout, PromptSetError
from refusal_probe.prompts.sets import SPLITS, Fixtures, Prompt, PromptSet
from refusal_probe.prompts.splits import (
    DEFAULT_FRACTIONS,
    DEFAULT_MINIMUM,
    Fractions,
    assignment_sha256,
    needed,
)


@dataclass(frozen=True)
class TableRecord:
    """One file or data-set split that was read.

    Attributes:
        name: Its path or data-set name.
        sha256: Fingerprint of what was read.
        layout: How its columns were mapped.
        records: Number of records in it.
    """

    name: str
    sha256: str
    layout: Layout
    records: int


@dataclass(frozen=True)
class SourceRecord:
    """One source (a ``--harmful``, ``--harmless`` or ``--prompts`` value) and how it was read.

    Attributes:
        source: The path or ``hf:`` name as given.
        side: The side it was given as, or None when its records carry their own labels.
        tables: The files or data-set splits read from it.
        split_method: ``column`` (the set's own splits), ``auto`` (seeded and stratified) or
            ``held-out`` (every prompt in test).
        kept: Prompts kept per side.
        other_side: Records dropped because their label named the side it was not given as.
    """

    source: str
    side: str | None
    tables: tuple[TableRecord, ...]
    split_method: str
    kept: Mapping[str, int]
    other_side: int = 0


@dataclass(frozen=True)
class Duplicate:
    """A text that appears more than once on one side; only its first record is kept.

    Attributes:
        side: ``harmful`` or ``harmless``.
        kept: Place of the record kept.
        dropped: Places of the repeats dropped.
        text: The start of the text.
    """

    side: str
    kept: str
    dropped: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class LoadedPrompts:
    """The harmful and harmless prompt sets read from a user's sources.

    Attributes:
        harmful: The harmful side (empty when no source gave one).
        harmless: The harmless side.
        sources: Each source and how it was read.
        seed: Seed of the automatic split.
        fractions: Fractions of the automatic split.
        limit: The length limit applied (``none`` when none).
        truncated: ``side/id`` of every prompt cut to the limit.
        duplicates: Repeated texts dropped.
        notes: Things a reader of the report should know (a harmful set given as harmless).
    """

    harmful: PromptSet
    harmless: PromptSet
    sources: tuple[SourceRecord, ...]
    seed: int = 0
    fractions: Fractions = DEFAULT_FRACTIONS
    limit: str = "none"
    truncated: tuple[str, ...] = ()
    duplicates: tuple[Duplicate, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def side(self, name: str) -> PromptSet:
        """The prompt set of ``harmful`` or ``harmless``."""
        if name not in SIDES:
            raise PromptSetError(f"unknown side {name!r}; use harmful or harmless")
        return self.harmful if name == "harmful" else self.harmless

    def split_ids(self) -> dict[str, dict[str, list[str]]]:
        """``{side: {split: [ids]}}``, the assignment a rerun must reproduce."""
        return {
            side: {s: [p.id for p in self.side(side).split(s)] for s in SPLITS} for side in SIDES
        }

    def split_sha256(self) -> str:
        """Fingerprint of the split assignment of both sides."""
        return assignment_sha256(
            {side: {p.id: p.split for p in self.side(side).prompts} for side in SIDES}
        )

    def fixtures(self, root: str | Path | None = None) -> Fixtures:
        """The sets as :class:`Fixtures` (no matched pairs, no jailbreaks: those come later)."""
        where = Path(root) if root is not None else Path(self.sources[0].source)
        prints = {t.name: t.sha256 for s in self.sources for t in s.tables}
        return Fixtures(where, self.harmful, self.harmless, fingerprints=prints)

    def summary(self) -> dict[str, Any]:
        """Plain data for the audit record: sources, layouts, splits, truncation, duplicates."""
        return {
            "sources": [
                {
                    "source": s.source,
                    "side": s.side,
                    "split_method": s.split_method,
                    "kept": dict(s.kept),
                    "other_side_dropped": s.other_side,
                    "tables": [
                        {"name": t.name, "sha256": t.sha256, "records": t.records,
                         "layout": t.layout.mapping()}
                        for t in s.tables
                    ],
                }
                for s in self.sources
            ],
            "splits": {
                "seed": self.seed,
                "fractions": self.fractions.as_dict(),
                "counts": {side: self.side(side).counts() for side in SIDES},
                "sha256": self.split_sha256(),
                "ids": self.split_ids(),
            },
            "sha256": {side: self.side(side).sha256 for side in SIDES},
            "truncated": {"limit": self.limit, "count": len(self.truncated),
                          "ids": list(self.truncated)},
            "duplicates": [
                {"side": d.side, "kept": d.kept, "dropped": list(d.dropped), "text": d.text}
                for d in self.duplicates
            ],
            "notes": list(self.notes),
        }


def prompt_set(name: str, prompts: list[Prompt] | tuple[Prompt, ...]) -> PromptSet:
    """A :class:`PromptSet` fingerprinted by its content (ids, texts, categories, splits)."""
    canon = json.dumps(
        [[p.id, p.text, p.category, p.split] for p in prompts], ensure_ascii=False,
        separators=(",", ":"),
    )
    return PromptSet(name, tuple(prompts), hashlib.sha256(canon.encode()).hexdigest())


def merge(*loaded: LoadedPrompts) -> LoadedPrompts:
    """Several sources' prompts as one pair of sets.

    A text given twice on one side is kept once (recorded); ids must stay unique per side.

    Raises:
        PromptSetError: Two sources give the same id on one side, the same text on both sides,
            or were split with different seeds or fractions.
    """
    if not loaded:
        raise PromptSetError("no prompt sources given; pass --prompts, --harmful or --harmless")
    first = loaded[0]
    for other in loaded[1:]:
        if (other.seed, other.fractions) != (first.seed, first.fractions):
            raise PromptSetError("prompt sources split with different seeds or fractions")
    sets: dict[str, list[Prompt]] = {}
    duplicates = [d for x in loaded for d in x.duplicates]
    for side in SIDES:
        ids: dict[str, str] = {}
        texts: dict[str, str] = {}
        kept: list[Prompt] = []
        for x in loaded:
            where = x.sources[0].source if x.sources else "?"
            for p in x.side(side).prompts:
                if p.text in texts:
                    duplicates.append(Duplicate(side, texts[p.text], (where,), p.text[:80]))
                    continue
                if p.id in ids:
                    raise PromptSetError(
                        f"{where}: {side} id {p.id!r} is also an id in {ids[p.id]}; ids must be "
                        "unique per side across sources: rename them, or drop one id column so "
                        "ids are made from the texts"
                    )
                ids[p.id], texts[p.text] = where, where
                kept.append(p)
        sets[side] = kept
    check_sides_disjoint(sets["harmful"], sets["harmless"])
    return LoadedPrompts(
        prompt_set("harmful", sets["harmful"]),
        prompt_set("harmless", sets["harmless"]),
        tuple(s for x in loaded for s in x.sources),
        first.seed,
        first.fractions,
        first.limit,
        tuple(t for x in loaded for t in x.truncated),
        tuple(duplicates),
        tuple(n for x in loaded for n in x.notes),
    )


def check_sides_disjoint(harmful: list[Prompt], harmless: list[Prompt]) -> None:
    """Raise when one text is both a harmful and a harmless prompt."""
    both = {p.text: p.id for p in harmful}
    clash = [(both[p.text], p.id, p.text) for p in harmless if p.text in both]
    if clash:
        h, n, text = clash[0]
        more = f" ({len(clash) - 1} other texts too)" if len(clash) > 1 else ""
        raise PromptSetError(
            f"the text {text[:60]!r} is both harmful (id {h!r}) and harmless (id {n!r}){more}; "
            "fix its label"
        )


def check_ready(
    loaded: LoadedPrompts,
    minimum: Mapping[str, int] = DEFAULT_MINIMUM,
    *,
    held_out: bool = False,
) -> None:
    """Raise unless both sides have enough prompts in each split the audits use.

    Args:
        loaded: The sets.
        minimum: Fewest prompts per side per split (default 8 in train and test, 4 in val).
        held_out: Only the test split is used (the direction is fit on the default set).

    Raises:
        PromptSetError: A side is empty, or a split has fewer prompts than needed; the message
            says how many are needed.
    """
    need = {s: (minimum.get(s, 0) if not held_out or s == "test" else 0) for s in SPLITS}
    for side in SIDES:
        if not len(loaded.side(side)):
            raise PromptSetError(
                f"no {side} prompts in {', '.join(s.source for s in loaded.sources)}; pass "
                f"--{side} PATH (or a file whose label column marks {side} records)"
            )
    for side in SIDES:
        counts = loaded.side(side).counts()
        short = [s for s in SPLITS if counts[s] < need[s]]
        if not short:
            continue
        auto = all(s.split_method == "auto" for s in loaded.sources)
        total = needed(loaded.fractions, need) if auto else None
        how = (
            f"give at least {total} {side} prompts (they are split {_shares(loaded.fractions)})"
            if total is not None
            else "add " + " and ".join(f"{need[s] - counts[s]} to {s}" for s in short)
        )
        have = " and ".join(f"{counts[s]} in {s} (needs {need[s]})" for s in short)
        raise PromptSetError(
            f"the {side} side has {have}: the audits need at least "
            f"{', '.join(f'{need[s]} in {s}' for s in SPLITS if need[s])} per side; {how}"
        )


def _shares(fractions: Fractions) -> str:
    return "/".join(f"{s} {v:g}" for s, v in fractions.as_dict().items())
