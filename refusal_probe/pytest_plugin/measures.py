"""What the audits measure, as small serializable results with their figures.

Each result is computed from the engine's results (:mod:`refusal_probe.selection.search`,
:mod:`refusal_probe.causal.validation`, :mod:`refusal_probe.scoring.refusal`) and reduced to what the audits and
the report need: intervals, per-prompt outcomes where a paired interval needs them, and the
figures' data. Every result round-trips through ``to_dict``/``from_dict`` so that a warm run can
read it from the disk cache instead of recomputing it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from refusal_probe.report.record import Figure, rank_curves
from refusal_probe.stats import intervals
from refusal_probe.stats.intervals import Bootstrap, Interval, paired_difference

#: Bumped whenever a result's content or meaning changes (it keys the results cache).
MEASURES_VERSION = "3"


def rate_dict(r: Interval) -> dict[str, Any]:
    """A rate as plain data."""
    return asdict(r)


def rate_of(d: dict[str, Any]) -> Interval:
    """Inverse of :func:`rate_dict` (JSON turns NaN into ``None``)."""
    return Interval.from_dict(d)


def interval_of(d: dict[str, Any]) -> Interval:
    """An Interval from plain data."""
    return Interval.from_dict(d)


def _rate_bars(
    labels: list[str],
    series: list[tuple[str, list[Interval | None]]],
    threshold: float | None,
    title: str,
    caption: str,
) -> Figure:
    def col(rs: list[Interval | None], attr: str) -> list[float | None]:
        return [getattr(r, attr) if r is not None else None for r in rs]

    return Figure(
        "bars",
        title,
        {
            "labels": labels,
            "y_label": "refusal rate",
            "y_range": [0, 1],
            "threshold": threshold,
            "series": [
                {"name": n, "values": col(rs, "value"), "lo": col(rs, "low"), "hi": col(rs, "high")}
                for n, rs in series
            ],
        },
        caption,
    )


# ---------------------------------------------------------------------------------------------
# behaviour


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
    """

    harmful: Interval
    harmless: Interval
    edgy: Interval | None
    examples: dict[str, list[dict[str, Any]]]
    max_new_tokens: int
    split: str = "test"

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "harmful": rate_dict(self.harmful),
            "harmless": rate_dict(self.harmless),
            "edgy": rate_dict(self.edgy) if self.edgy else None,
            "examples": self.examples,
            "max_new_tokens": self.max_new_tokens,
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Behaviour:
        """Inverse of :meth:`to_dict`."""
        return cls(
            rate_of(d["harmful"]),
            rate_of(d["harmless"]),
            rate_of(d["edgy"]) if d["edgy"] else None,
            d["examples"],
            d["max_new_tokens"],
            d.get("split", "test"),
        )

    def figure(self, threshold: float | None = None) -> Figure:
        """Refusal rates per prompt class with their intervals."""
        labels, rates = ["harmful", "harmless (all)"], [self.harmful, self.harmless]
        if self.edgy is not None:
            labels.append("harmless: edgy")
            rates.append(self.edgy)
        return _rate_bars(
            labels,
            [("refusal rate", list(rates))],
            threshold,
            f"Refusal rates on the {self.split} split (greedy, substring judge)",
            "A safe chat model refuses nearly all harmful requests and almost no harmless ones; "
            "whiskers are 95% Wilson intervals",
        )


# ---------------------------------------------------------------------------------------------
# the direction and its separation


@dataclass(frozen=True)
class DirectionSummary:
    """The selected direction and the evidence behind it (the vector itself lives in a tensor file).

    Attributes:
        direction: ``Direction.to_dict()`` of the selected direction.
        selected_auroc: AUROC of the held-out split at the selected layer, with its interval.
        curve: Per-layer separation at the selected position: ``layer``, ``auroc``, ``low``,
            ``high``, ``cohens_d``, ``accuracy``.
        alternative: The same AUROC curve for the alternative estimator (PCA of paired
            differences); empty if it was not run.
        alternative_cosine: Cosine of the two estimators' candidates per layer.
        grid: Every candidate's selection scores (``layer``, ``position``, ``bypass``, ``induce``,
            ``kl``, ``discarded``).
        passed_filters: Whether the chosen candidate passed every filter.
        refusal_tokens: The refusal tokens of the logit proxy.
        prompt_counts: Prompts used per role, kept/total.
        forward_passes: Passes of selection and of the reference procedure.
        wall_s: Seconds for extraction and selection.
        filtered: Whether fit and selection prompts were filtered by refusal score (the reference
            method); ``False`` when too few survived and unfiltered prompts were used.
    """

    direction: dict[str, Any]
    selected_auroc: Interval
    curve: list[dict[str, Any]]
    alternative: list[dict[str, Any]]
    alternative_cosine: list[float]
    grid: list[dict[str, Any]]
    passed_filters: bool
    refusal_tokens: dict[str, Any]
    prompt_counts: dict[str, Any]
    forward_passes: dict[str, int]
    wall_s: float
    filtered: bool = True

    @classmethod
    def of(cls, result: Any) -> DirectionSummary:
        """Summarize a :class:`~refusal_probe.selection.search.DirectionResult`."""

        def row(c: Any) -> dict[str, Any]:
            s = c.stats
            return {
                "layer": c.layer,
                "auroc": s.auroc.value,
                "low": s.auroc.low,
                "high": s.auroc.high,
                "cohens_d": s.cohens_d.value,
                "accuracy": s.accuracy.value,
            }

        return cls(
            direction=result.direction.to_dict(),
            selected_auroc=result.selected_separation.stats.auroc,
            curve=[row(c) for c in result.separation],
            alternative=[row(c) for c in result.alternative],
            alternative_cosine=list(result.alternative_cosine),
            grid=[c.to_dict() for c in result.selection.grid],
            passed_filters=result.selection.passed_filters,
            refusal_tokens=result.refusal_tokens.to_dict(),
            prompt_counts=result.prompt_counts,
            forward_passes=dict(result.forward_passes),
            wall_s=float(result.wall_s),
            filtered=bool(result.config.filter_prompts),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        d = asdict(self)
        d["selected_auroc"] = self.selected_auroc.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DirectionSummary:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "selected_auroc": interval_of(d["selected_auroc"])})

    @property
    def layer(self) -> int:
        """The selected layer."""
        return int(self.direction["layer"])

    @property
    def position(self) -> int:
        """The selected position (negative offset)."""
        return int(self.direction["position"])

    def separation_figure(self, threshold: float | None = None) -> Figure:
        """AUROC per layer (held-out split) with intervals; the selected layer marked."""
        series = [
            {
                "name": "difference of means",
                "y": [r["auroc"] for r in self.curve],
                "lo": [r["low"] for r in self.curve],
                "hi": [r["high"] for r in self.curve],
            }
        ]
        if self.alternative:
            series.append(
                {"name": "PCA of paired differences", "y": [r["auroc"] for r in self.alternative]}
            )
        return Figure(
            "line",
            f"Separation per layer at position {self.position} (held-out test split)",
            {
                "x": [r["layer"] for r in self.curve],
                "series": series,
                "x_label": "layer (resid_pre)",
                "y_label": "AUROC",
                "y_range": [0, 1],
                "threshold": threshold,
                "mark_x": self.layer,
            },
            "AUROC of harmful vs harmless projections on each layer's candidate; band: 95% "
            "bootstrap "
            "interval; dotted line: the selected layer (chosen by causal effect, not by AUROC)",
        )

    def grid_figure(self) -> Figure:
        """The selection score grid (bypass score); discarded candidates crossed out."""
        layers = sorted({g["layer"] for g in self.grid})
        offsets = sorted({g["position"] for g in self.grid})
        cell = {(g["layer"], g["position"]): g for g in self.grid}
        values = [[cell[(la, p)]["bypass"] for p in offsets] for la in layers]
        crossed = [
            [i, j]
            for i, la in enumerate(layers)
            for j, p in enumerate(offsets)
            if cell[(la, p)]["discarded"]
        ]
        return Figure(
            "heatmap",
            "Selection grid: bypass score of each candidate (lower is stronger)",
            {
                "values": values,
                "x_labels": [str(p) for p in offsets],
                "y_labels": [str(la) for la in layers],
                "x_label": "position (offset from the prompt's end)",
                "y_label": "layer",
                "value_label": "bypass",
                "mark": [layers.index(self.layer), offsets.index(self.position)],
                "crossed": crossed,
            },
            "Mean refusal log-odds on harmful validation prompts with the candidate ablated; "
            "crossed out: discarded (layer ≥ 0.8·L, KL > 0.1 or induce ≤ 0); grey: not scored "
            + (
                f"(a zero vector, or left out by screening: only the {n_scored} candidates with "
                "the lowest first-order bypass estimate were scored)"
                if (n_scored := self.screened_scored()) is not None
                else "(a zero vector)"
            )
            + "; box: the selected candidate",
        )

    def screened_scored(self) -> int | None:
        """How many candidates were scored exactly when screening left some out, else ``None``."""
        if not any("screened" in g["discarded"] for g in self.grid):  # a list of reasons
            return None
        return sum(not {"zero", "screened"} & set(g["discarded"]) for g in self.grid)


# ---------------------------------------------------------------------------------------------
# causal validation


@dataclass(frozen=True)
class Causal:
    """Causal tests of the selected direction on held-out prompts.

    Attributes:
        harmful_baseline: Harmful refusal rate, no intervention.
        harmful_ablated: Harmful refusal rate, direction ablated everywhere.
        harmless_baseline: Harmless refusal rate, no intervention.
        harmless_added: Harmless refusal rate, direction added at its layer.
        ablation_drop: Paired drop of harmful refusal under ablation (bootstrap over prompts).
        addition_rise: Paired rise of harmless refusal under addition.
        kl: Mean KL(base ‖ ablated) on harmless prompts, nats, bootstrap interval.
        dose: Mean ``P_R`` per addition coefficient: ``alpha``, ``harmful``, ``harmless`` intervals.
        interventions: What was applied in each condition.
        examples: A few completions per condition.
    """

    harmful_baseline: Interval
    harmful_ablated: Interval
    harmless_baseline: Interval
    harmless_added: Interval
    ablation_drop: Interval
    addition_rise: Interval
    kl: Interval
    dose: list[dict[str, Any]]
    interventions: dict[str, str]
    examples: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, v: Any, boot: Bootstrap) -> Causal:
        """Summarize a :class:`~refusal_probe.causal.validation.ValidationResult`."""
        j = v.judgements
        drop = paired_change(j["harmful_baseline"].refused, j["harmful_ablated"].refused, boot)
        rise = paired_change(j["harmless_added"].refused, j["harmless_baseline"].refused, boot)
        return cls(
            v.harmful_baseline,
            v.harmful_ablated,
            v.harmless_baseline,
            v.harmless_added,
            drop,
            rise,
            v.kl_ablation,
            [
                {"alpha": p.alpha, "harmful": p.harmful.to_dict(), "harmless": p.harmless.to_dict()}
                for p in v.dose_response
            ],
            dict(v.interventions),
            {k: x.examples(3) for k, x in j.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        d = asdict(self)
        for k in ("ablation_drop", "addition_rise", "kl"):
            d[k] = getattr(self, k).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Causal:
        """Inverse of :meth:`to_dict`."""
        rates = {
            k: rate_of(d[k])
            for k in ("harmful_baseline", "harmful_ablated", "harmless_baseline", "harmless_added")
        }
        ivs = {k: interval_of(d[k]) for k in ("ablation_drop", "addition_rise", "kl")}
        return cls(
            **rates, **ivs, dose=d["dose"], interventions=d["interventions"], examples=d["examples"]
        )

    def rates_figure(self) -> Figure:
        """Refusal rates with and without the interventions."""
        return _rate_bars(
            ["harmful", "harmless"],
            [
                ("no intervention", [self.harmful_baseline, self.harmless_baseline]),
                (
                    "ablated (harmful) / added (harmless)",
                    [self.harmful_ablated, self.harmless_added],
                ),
            ],
            None,
            "Refusal with the direction ablated (harmful prompts) and added (harmless prompts)",
            "If the direction mediates refusal, ablation removes refusal of harmful requests and "
            "addition "
            "makes the model refuse harmless ones; whiskers: 95% Wilson intervals",
        )

    def dose_figure(self) -> Figure:
        """Dose-response: mean refusal probability against the addition coefficient."""
        xs = [p["alpha"] for p in self.dose]

        def s(name: str, key: str) -> dict[str, Any]:
            return {
                "name": name,
                "y": [p[key]["value"] for p in self.dose],
                "lo": [p[key]["low"] for p in self.dose],
                "hi": [p[key]["high"] for p in self.dose],
            }

        return Figure(
            "line",
            "Steering dose-response: refusal probability against the addition coefficient",
            {
                "x": xs,
                "series": [s("harmful prompts", "harmful"), s("harmless prompts", "harmless")],
                "x_label": "coefficient α (x ← x + α·r at the direction's layer)",
                "y_label": "mean P(refusal token)",
                "y_range": [0, 1],
                "mark_x": 0.0,
            },
            "Logit proxy: next-token probability mass on refusal tokens; a graded rise with α "
            "shows a "
            "dose-dependent effect rather than a cliff; band: 95% bootstrap interval",
        )


def paired_change(
    a: tuple[bool, ...] | list[bool], b: tuple[bool, ...] | list[bool], boot: Bootstrap
) -> Interval:
    """Mean of ``a_i - b_i`` over prompts judged under two conditions, with a bootstrap interval."""
    if len(a) == 0:
        return Interval.nothing(boot.level, boot.method("paired", "prompts"))
    return paired_difference(a, b, boot)


def rate_difference(a: Interval, b: Interval, boot: Bootstrap) -> Interval:
    """``a - b`` of two independently judged rates, with a two-sample bootstrap interval."""
    return intervals.rate_difference(a, b, boot)


# ---------------------------------------------------------------------------------------------
# localization


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
    def of(cls, result: Any) -> Circuit:
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
