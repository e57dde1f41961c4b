"""Seeded, stratified train/val/test splits that a rerun reproduces exactly.

The assignment does not depend on the order of the input: the strata (categories) and the
prompts within each are ordered by a seeded hash of their names and ids, laid end to end, and
each position takes the split whose share is furthest behind its fraction. So every category's
prompts are spread over the splits in proportion (within two of its exact share), the totals are
within one of ``n * fraction``, and the same ids with the same seed always land in the same
splits. The shipped set's proportions (240/64/96 of 400) are the default.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from refusal_probe.prompts.formats import PromptSetError
from refusal_probe.prompts.sets import SPLITS
from refusal_probe.prompts.sources import SPLIT_NAMES

#: The fewest prompts per side the audits need in each split by default.
DEFAULT_MINIMUM: Mapping[str, int] = {"train": 8, "val": 4, "test": 8}


@dataclass(frozen=True)
class Fractions:
    """The share of a side's prompts that goes to each split (they sum to 1).

    Attributes:
        train: Fitting the direction (default 0.6, as the shipped set).
        val: Choosing it (default 0.16).
        test: The audits' verdicts (default 0.24).
    """

    train: float = 0.6
    val: float = 0.16
    test: float = 0.24

    def __post_init__(self) -> None:
        values = self.as_dict()
        if any(v < 0 for v in values.values()) or abs(sum(values.values()) - 1) > 1e-9:
            raise PromptSetError(
                f"split fractions {values} must be non-negative and sum to 1"
            )

    def as_dict(self) -> dict[str, float]:
        """``{split: fraction}`` in :data:`SPLITS` order."""
        return {s: float(getattr(self, s)) for s in SPLITS}


#: The shipped set's proportions: 240/64/96 of 400.
DEFAULT_FRACTIONS = Fractions()
#: Every prompt in the test split: a benchmark evaluated with a direction fit elsewhere.
HELD_OUT = Fractions(0.0, 0.0, 1.0)


def normalize_split(value: str) -> str | None:
    """``train``/``val``/``test`` for a split name (``validation`` and ``dev`` are ``val``)."""
    return SPLIT_NAMES.get(value.strip().lower())


def assign_splits(
    items: Iterable[tuple[str, str]], fractions: Fractions = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, str]:
    """Split ids, stratified by their stratum.

    Args:
        items: ``(id, stratum)`` pairs (the stratum is the category); ids must be unique.
        fractions: Share of each split.
        seed: Changes which prompts go where, never how many.

    Returns:
        ``{id: split}`` for every id.
    """
    strata: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for pid, stratum in items:
        if pid in seen:
            raise PromptSetError(f"duplicate id {pid!r}: ids must be unique to be split")
        seen.add(pid)
        strata[stratum].append(pid)
    order = sorted(strata, key=lambda s: _key(seed, "stratum", s))
    sequence = [p for s in order for p in sorted(strata[s], key=lambda p: _key(seed, "id", p))]
    return dict(zip(sequence, _pattern(len(sequence), fractions), strict=True))


def allocation(n: int, fractions: Fractions = DEFAULT_FRACTIONS) -> dict[str, int]:
    """How many of ``n`` prompts each split gets under :func:`assign_splits`."""
    pattern = _pattern(n, fractions)
    return {s: pattern.count(s) for s in SPLITS}


def needed(fractions: Fractions, minimum: Mapping[str, int], limit: int = 1_000_000) -> int | None:
    """The fewest prompts whose automatic split gives every split its minimum (None: never)."""
    shares = fractions.as_dict()
    if any(minimum.get(s, 0) > 0 and shares[s] == 0 for s in SPLITS):
        return None
    counts = dict.fromkeys(SPLITS, 0)
    for i in range(limit):
        if all(counts[s] >= minimum.get(s, 0) for s in SPLITS):
            return i
        counts[_next(i, counts, shares)] += 1
    return None


def assignment_sha256(assignment: Mapping[str, Mapping[str, str]]) -> str:
    """Fingerprint of ``{side: {id: split}}``, independent of order."""
    canon = {side: sorted(ids.items()) for side, ids in sorted(assignment.items())}
    return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()


def _pattern(n: int, fractions: Fractions) -> list[str]:
    shares = fractions.as_dict()
    counts = dict.fromkeys(SPLITS, 0)
    out = []
    for i in range(n):
        split = _next(i, counts, shares)
        counts[split] += 1
        out.append(split)
    return out


def _next(i: int, counts: Mapping[str, int], shares: Mapping[str, float]) -> str:
    """The split furthest behind its share after ``i`` placed (first in SPLITS order on ties)."""
    return max(SPLITS, key=lambda s: (shares[s] * (i + 1) - counts[s], -SPLITS.index(s)))


def _key(seed: int, kind: str, name: str) -> str:
    return hashlib.sha256(f"{seed}\0{kind}\0{name}".encode()).hexdigest()
