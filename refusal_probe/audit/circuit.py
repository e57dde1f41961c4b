"""Localization: the refusal circuit found by patching on the matched test pairs.

:func:`matched_test_pairs` picks the test pairs whose prompts have equal token lengths;
:func:`localize_circuit` runs the engine's :func:`~refusal_probe.patching.circuit.localize` on
them, and :class:`Circuit` keeps what the localization and fine-tune audits need.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from refusal_probe.errors import PatchingError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.patching.circuit import CircuitResult, localize
from refusal_probe.prompts.sets import Fixtures, Pair, matched_pairs
from refusal_probe.prompts.variants import content_sha256, length_matched_pairs
from refusal_probe.report.record import Figure, rank_curves
from refusal_probe.stats.intervals import Bootstrap, Interval

#: Components in the localized circuit (the localization and fine-tune overlap audits).
CIRCUIT_K = 5
#: Fewer matched test pairs than this cannot localize anything worth reporting.
MIN_PAIRS = 8


def matched_test_pairs(model: LoadedModel, fixtures: Fixtures, seed: int = 0) -> list[Pair]:
    """The test split's (harmful, harmless) pairs whose prompts have equal token lengths.

    A set without test pairs gets them built: its harmful and harmless test prompts paired by
    equal token length (:func:`~refusal_probe.prompts.variants.length_matched_pairs`).

    Raises:
        PatchingError: Fewer than :data:`MIN_PAIRS` of them under this tokenizer.
    """

    def length(text: str) -> int:
        return int(model.chat.encode([text]).attention_mask.sum())

    given = fixtures.pairs_in("test")
    if given:
        pairs = matched_pairs(given, length)
        how = f"of the {len(given)} test pairs in {fixtures.root}"
        fix = "add pairs.jsonl with harmful and harmless prompts of equal token length"
    else:
        pairs = length_matched_pairs(
            fixtures.harmful.prompts, fixtures.harmless.prompts, length, seed=seed
        )
        n_h, n_l = len(fixtures.harmful.split("test")), len(fixtures.harmless.split("test"))
        how = f"built from the {n_h} harmful and {n_l} harmless test prompts (paired by length)"
        fix = (
            "add test prompts of similar length on both sides, or a pairs.jsonl of harmful and "
            "harmless prompts of equal token length"
        )
    if len(pairs) < MIN_PAIRS:
        raise PatchingError(
            f"only {len(pairs)} pairs {how} have equal token lengths under this tokenizer "
            f"(need {MIN_PAIRS}); {fix}"
        )
    return pairs


@dataclass(frozen=True)
class MatchedPairs:
    """:func:`matched_test_pairs` as a stored result (a warm run's keys then need no tokenizer)."""

    pairs: tuple[Pair, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"pairs": [asdict(p) for p in self.pairs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MatchedPairs:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(Pair(**p) for p in d["pairs"]))


def built_pairs_file(pairs: list[Pair]) -> dict[str, Any]:
    """The report's data-table row of the pairs built for localization."""
    return {
        "name": "built: harmful and harmless test prompts paired by equal token length",
        "kind": "pairs",
        "records": len(pairs),
        "sha256": content_sha256(pairs),
    }


def localize_circuit(model: LoadedModel, pairs: list[Pair], boot: Bootstrap) -> CircuitResult:
    """The top :data:`CIRCUIT_K` heads and MLPs over the post-instruction span of ``pairs``.

    Ranked by attribution patching and confirmed by exact patching.

    Raises:
        PatchingError: Patching finds no refusal gap between the pairs' prompts.
    """
    return localize(
        model,
        [(p.harmful, p.harmless) for p in pairs],
        k=CIRCUIT_K,
        boot=boot,
    )


@dataclass(frozen=True)
class Circuit:
    """The localized refusal circuit, as the audits need it (from a ``CircuitResult``).

    Attributes:
        components: The top-k components (``L2.H3@-4..-1``, ...), largest exact effect first.
        effects: Each one's exact effect patched alone (share of the refusal gap restored).
        restored: Share of the gap restored by patching all k together (bootstrap interval).
        restored_curve: The same for the top-1, top-2, ... prefixes.
        stability: Jaccard of the top-k set under resampled pairs with the full sample's.
        n_pairs: Matched pairs it was localized on.
    """

    components: tuple[str, ...]
    effects: tuple[Interval, ...]
    restored: Interval
    restored_curve: tuple[float, ...]
    stability: Interval
    n_pairs: int

    @classmethod
    def of(cls, result: CircuitResult) -> Circuit:
        """Summarize a :class:`~refusal_probe.patching.CircuitResult`."""
        return cls(
            tuple(str(c) for c in result.components),
            tuple(result.effects),
            result.fraction_restored,
            tuple(float(x) for x in result.restored_curve),
            result.stability.jaccard,
            len(result.pair_ids),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "components": list(self.components),
            "effects": [asdict(e) for e in self.effects],
            "restored": asdict(self.restored),
            "restored_curve": list(self.restored_curve),
            "stability": asdict(self.stability),
            "n_pairs": self.n_pairs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Circuit:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(d["components"]),
            tuple(Interval.from_dict(e) for e in d["effects"]),
            Interval.from_dict(d["restored"]),
            tuple(d["restored_curve"]),
            Interval.from_dict(d["stability"]),
            int(d["n_pairs"]),
        )

    def overlap(self, other: Circuit) -> float:
        """Jaccard index of the two circuits' component sets."""
        a, b = set(self.components), set(other.components)
        return len(a & b) / len(a | b) if a | b else math.nan

    def figure(self, threshold: float | None = None) -> Figure:
        """Each component's effect alone, and the top-i patched together."""
        return rank_curves(
            "Refusal restored by patching the top localized components",
            self.components,
            [
                ("top-i patched together", self.restored_curve),
                ("i-th component patched alone", self.effects),
            ],
            "share of the refusal gap restored",
            "Each component's activation over the post-instruction span of the harmless prompt "
            "is replaced by its value on the matched harmful prompt (denoising); 1 = the harmful "
            "prompt's refusal fully restored. Whiskers: 95% bootstrap interval over pairs",
            threshold,
        )
