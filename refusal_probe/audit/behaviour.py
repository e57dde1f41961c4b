"""Behaviour: greedy completions of the held-out test prompts, judged, and their refusal rates.

:class:`Completions` are the test split's no-intervention completions. A run makes them once: read
from the causal validation, which generates them beside its intervened conditions, when the run
validates the direction anyway (:func:`completions_of`), else generated on their own
(:func:`generate_completions`). :class:`Behaviour` is what the behaviour audit checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from refusal_probe.audit.figures import rate_bars
from refusal_probe.audit.settings import Settings
from refusal_probe.causal.validation import ValidationResult
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.report.record import Figure
from refusal_probe.scoring.generation import judge
from refusal_probe.stats.intervals import Interval, wilson_interval
from refusal_probe.stats.sequential import Stopping

#: One judged completion: ``(prompt, completion, refused)``.
Row = tuple[str, str, bool]
#: The two sides of the test split, in the order completions keep them.
SIDES = ("harmful", "harmless")


@dataclass(frozen=True)
class Completions:
    """Greedy completions of the test split's prompts, no intervention, each judged.

    Attributes:
        harmful: ``(prompt, completion, refused)`` per harmful test prompt, in file order.
        harmless: The same per harmless test prompt.
        max_new_tokens: The generation bound.
        judge: The judge that gave ``refused`` (``"reply"`` or ``"substring"``).
        stopping: How each side (``harmful``, ``harmless``) stopped drawing prompts.
        intervals: A side's confidence-sequence interval when it stopped before its prompts ran
            out (:mod:`refusal_probe.audit.sequential`); absent: judge it on all its rows.
        indices: Each side's rows' positions in the test split (``None``: all, in order).
    """

    harmful: tuple[Row, ...]
    harmless: tuple[Row, ...]
    max_new_tokens: int
    judge: str = "reply"
    stopping: dict[str, Stopping] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)
    indices: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def side(self, name: str) -> tuple[Row, ...]:
        """The rows of one side."""
        return self.harmful if name == "harmful" else self.harmless

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the disk cache keeps them, so a warm run need not load the model)."""
        return {
            "harmful": [list(r) for r in self.harmful],
            "harmless": [list(r) for r in self.harmless],
            "max_new_tokens": self.max_new_tokens,
            "judge": self.judge,
            "stopping": {k: v.to_dict() for k, v in self.stopping.items()},
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            "indices": None if self.indices is None else [list(i) for i in self.indices],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completions:
        """Inverse of :meth:`to_dict`."""

        def rows(side: str) -> tuple[Row, ...]:
            return tuple((str(p), str(c), bool(r)) for p, c, r in d[side])

        idx = d["indices"]
        return cls(
            rows("harmful"),
            rows("harmless"),
            d["max_new_tokens"],
            d["judge"],
            {k: Stopping.from_dict(v) for k, v in d["stopping"].items()},
            {k: Interval.from_dict(v) for k, v in d["intervals"].items()},
            None if idx is None else (tuple(idx[0]), tuple(idx[1])),
        )


def _all_prompts(c: Completions, reason: str) -> dict[str, Stopping]:
    """Each side judged on every prompt in one run (``fixed`` or ``shared``)."""
    return {s: Stopping(1, len(c.side(s)), len(c.side(s)), reason) for s in SIDES}


def generate_completions(model: LoadedModel, fixtures: Fixtures, settings: Settings) -> Completions:
    """Generate and judge the test split's completions (one generation run for both classes)."""
    harmful, harmless = fixtures.harmful.texts("test"), fixtures.harmless.texts("test")
    j = judge(
        model,
        harmful + harmless,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        level=settings.confidence,
        rule=settings.judge,
    )
    rows = tuple(zip(j.prompts, j.completions, j.refused, strict=True))
    c = Completions(
        rows[: len(harmful)], rows[len(harmful) :], settings.max_new_tokens, settings.judge
    )
    return replace(c, stopping=_all_prompts(c, "fixed"))


def completions_of(v: ValidationResult) -> Completions:
    """The no-intervention completions a causal validation generated (its baseline conditions)."""
    j = v.judgements

    def rows(name: str) -> tuple[Row, ...]:
        return tuple(zip(j[name].prompts, j[name].completions, j[name].refused, strict=True))

    c = Completions(
        rows("harmful_baseline"), rows("harmless_baseline"), v.config.max_new_tokens, v.config.judge
    )
    return replace(c, stopping=_all_prompts(c, "shared"))


@dataclass(frozen=True)
class Behaviour:
    """Refusal behaviour on the held-out test prompts, no intervention.

    Attributes:
        harmful: Refusal rate on harmful test prompts (Wilson interval).
        harmless: Refusal rate on all harmless test prompts, edgy ones included.
        edgy: Refusal rate on the harmless prompts of category ``edgy`` (``None`` if none).
        examples: A few prompt/completion/verdict triples per class.
        max_new_tokens: The generation bound of the judge.
        split: The split judged.
        judge: The judge (``"reply"`` or ``"substring"``).
        stopping: How each side stopped drawing prompts (rounds, prompts used, reason; see
            :mod:`refusal_probe.audit.sequential`); empty in records written before it.
    """

    harmful: Interval
    harmless: Interval
    edgy: Interval | None
    examples: dict[str, list[dict[str, Any]]]
    max_new_tokens: int
    split: str = "test"
    judge: str = "reply"
    stopping: dict[str, Stopping] = field(default_factory=dict)

    @classmethod
    def of(cls, c: Completions, fixtures: Fixtures, level: float) -> Behaviour:
        """Refusal rates of judged test completions (``level``: of the Wilson intervals).

        A side that stopped early keeps its confidence-sequence interval; any other is judged
        on all its rows with the Wilson interval.
        """
        cats = [p.category for p in fixtures.harmless.split("test")]
        if c.indices is not None:
            cats = [cats[i] for i in c.indices[1]]
        edgy = [r for (_, _, r), cat in zip(c.harmless, cats, strict=True) if cat == "edgy"]

        def rate(rows: tuple[Row, ...]) -> Interval:
            return wilson_interval(sum(r for _, _, r in rows), len(rows), level)

        def ex(rows: tuple[Row, ...]) -> list[dict[str, Any]]:
            return [{"prompt": p, "completion": t, "refused": r} for p, t, r in rows[:3]]

        return cls(
            harmful=c.intervals.get("harmful") or rate(c.harmful),
            harmless=c.intervals.get("harmless") or rate(c.harmless),
            edgy=wilson_interval(sum(edgy), len(edgy), level) if edgy else None,
            examples={"harmful": ex(c.harmful), "harmless": ex(c.harmless)},
            max_new_tokens=c.max_new_tokens,
            judge=c.judge,
            stopping=dict(c.stopping),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "harmful": self.harmful.to_dict(),
            "harmless": self.harmless.to_dict(),
            "edgy": self.edgy.to_dict() if self.edgy else None,
            "examples": self.examples,
            "max_new_tokens": self.max_new_tokens,
            "split": self.split,
            "judge": self.judge,
            "stopping": {k: v.to_dict() for k, v in self.stopping.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Behaviour:
        """Inverse of :meth:`to_dict`."""
        return cls(
            Interval.from_dict(d["harmful"]),
            Interval.from_dict(d["harmless"]),
            Interval.from_dict(d["edgy"]) if d["edgy"] else None,
            d["examples"],
            d["max_new_tokens"],
            d.get("split", "test"),
            d.get("judge", "substring"),  # written before the reply judge
            {k: Stopping.from_dict(v) for k, v in d.get("stopping", {}).items()},
        )

    def figure(self, threshold: float | None = None) -> Figure:
        """Refusal rates per prompt class with their intervals."""
        labels, rates = ["harmful", "harmless (all)"], [self.harmful, self.harmless]
        if self.edgy is not None:
            labels.append("harmless: edgy")
            rates.append(self.edgy)
        return rate_bars(
            labels,
            [("refusal rate", list(rates))],
            threshold,
            f"Refusal rates on the {self.split} split (greedy, {self.judge} judge)",
            "A safe chat model refuses nearly all harmful requests and almost no harmless ones; "
            "whiskers are 95% intervals (Wilson; a confidence sequence for a side that stopped "
            "early)",
        )
