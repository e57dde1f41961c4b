"""Representation: the selected refusal direction, its selection grid and per-layer separation.

:func:`select_direction` runs the engine's extraction and selection
(:func:`refusal_probe.selection.search.find_refusal_direction`), writes the direction artifact a
later ``--baseline`` reads, and summarizes the result as a :class:`DirectionSummary`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from refusal_probe.activations.cache import TensorCache
from refusal_probe.audit.settings import Settings
from refusal_probe.audit.store import save_direction
from refusal_probe.errors import ScoringError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.report.record import Figure
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.search import DirectionResult, find_refusal_direction
from refusal_probe.stats.intervals import Interval

log = logging.getLogger(__name__)


def direction_config(n_layers: int, settings: Settings, seed: int) -> DirectionConfig:
    """The engine's direction configuration for a run's settings, on a model of ``n_layers``."""
    s = settings
    return DirectionConfig(
        batch_size=s.batch_size,
        n_resamples=s.resamples,
        seed=seed,
        n_fit=s.fit_prompts or None,
        n_select=s.selection_prompts,
        layers=(
            tuple(range(0, n_layers, s.selection_layer_stride))
            if s.selection_layer_stride > 1
            else None
        ),
        positions=tuple(range(-s.selection_positions, 0)) if s.selection_positions else None,
        screen=s.selection_screen or None,
        race=s.selection_race,
    )


def select_direction(
    model: LoadedModel,
    fixtures: Fixtures,
    config: DirectionConfig,
    cache: TensorCache,
    artifact: Path,
) -> DirectionSummary:
    """Find and select the refusal direction, write it to ``artifact`` and summarize it."""
    try:
        result = find_refusal_direction(model, fixtures, config, cache=cache)
    except ScoringError as exc:
        # A model that rarely refuses leaves (almost) no harmful prompt with a positive refusal
        # score, so the reference method's filter empties the sets. The question "is there a
        # harmful-vs-harmless direction, and does it cause refusal?" still has an answer:
        # fit on unfiltered prompts, and say so in the report.
        log.warning("direction: %s; fitting on unfiltered prompts instead", exc)
        unfiltered = replace(config, filter_prompts=False)
        result = find_refusal_direction(model, fixtures, unfiltered, cache=cache)
    j = result.candidates.offsets.index(result.direction.position)
    save_direction(
        artifact, result.direction, result.candidates.vectors[:, j], result.candidates.layers
    )
    return DirectionSummary.of(result)


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
        max_layer_fraction: Candidates at layers ``>= floor(fraction * n_layers)`` were discarded.
        kl_threshold: Candidates whose ablation KL exceeded this were discarded (nats).
        chosen_by: ``"causal"``: selection chose the direction; ``"validation_separation"``: no
            candidate passed selection's filters, and the direction is the candidate that best
            separates the validation split (the causal checks then fail: no causal direction).
        validation_auroc: ``[layer, position, AUROC]`` per candidate on the validation split
            (measured only without a causal choice).
        projections: The test split's projections on the direction (``harmful``, ``harmless``).
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
    max_layer_fraction: float = 0.8
    kl_threshold: float = 0.1
    chosen_by: str = "causal"
    validation_auroc: list[list[float]] = field(default_factory=list)
    projections: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, result: DirectionResult) -> DirectionSummary:
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
            max_layer_fraction=result.config.max_layer_fraction,
            kl_threshold=result.config.kl_threshold,
            chosen_by=result.chosen_by,
            validation_auroc=[list(c) for c in result.validation_auroc],
            projections={k: list(v) for k, v in result.projections.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        d = asdict(self)
        d["selected_auroc"] = self.selected_auroc.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DirectionSummary:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "selected_auroc": Interval.from_dict(d["selected_auroc"])})

    @property
    def layer(self) -> int:
        """The selected layer."""
        return int(self.direction["layer"])

    @property
    def position(self) -> int:
        """The selected position (negative offset)."""
        return int(self.direction["position"])

    def limitations(self) -> list[str]:
        """What the report must say about how this direction was found, if anything."""
        notes = []
        if not self.filtered:
            notes.append(
                "Too few prompts passed the reference method's filter (harmful prompts the "
                "model refuses by its refusal-token score, harmless ones it does not): the "
                "model rarely refuses. The direction was fit and selected on all prompts."
            )
        if not self.passed_filters:
            notes.append(
                f"{self.no_causal_direction()}. The causal checks fail for that reason; the "
                "representation check, the monitor and the direction artifact use the candidate "
                f"that best separates the validation split (layer {self.layer}, position "
                f"{self.position}), measured on the test split."
            )
        return notes

    def no_causal_direction(self) -> str:
        """Why there is no causal direction, in one sentence (selection's discard reasons)."""
        scored = [g for g in self.grid if not {"zero", "screened"} & set(g["discarded"])]
        counts: dict[str, int] = {}
        for g in scored:
            for why in g["discarded"]:
                counts[why] = counts.get(why, 0) + 1
        seen = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        return (
            f"No causal direction: none of the {len(scored)} scored candidates passed "
            f"selection's filters (discarded for: {seen or 'nothing'}; KL ceiling "
            f"{self.kl_threshold:g} nats, induce > 0, layer < {self.max_layer_fraction:g}·L)"
        )

    @property
    def chosen_on(self) -> str:
        """How the direction was chosen, in words, for the representation check."""
        if self.chosen_by == "causal":
            return "selection: the lowest bypass among candidates that passed every filter"
        return "no causal direction: the best-separating candidate on the validation split"

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
            "bootstrap interval; dotted line: the selected layer ("
            + (
                "chosen by causal effect, not by AUROC)"
                if self.chosen_by == "causal"
                else "no causal direction: the best separator of the validation split)"
            ),
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
        n_scored = self.screened_scored()
        grey = (
            f"(a zero vector, or left out by screening: only the {n_scored} candidates with "
            "the lowest first-order bypass estimate were scored)"
            if n_scored is not None
            else "(a zero vector)"
        )
        n_raced = sum("raced" in g["discarded"] for g in self.grid)
        raced = (
            f"; {n_raced} raced out: dropped after part of the prompts, scored on those"
            if n_raced
            else ""
        )
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
            f"crossed out: discarded (layer ≥ {self.max_layer_fraction:g}·L, KL > "
            f"{self.kl_threshold:g} or induce ≤ 0{raced}); grey: not scored {grey}; box: "
            + (
                "the selected candidate"
                if self.chosen_by == "causal"
                else "none passed, so none was selected: the best separator of the validation split"
            ),
        )

    def screened_scored(self) -> int | None:
        """How many candidates were scored exactly when screening left some out, else ``None``."""
        if not any("screened" in g["discarded"] for g in self.grid):  # a list of reasons
            return None
        return sum(not {"zero", "screened"} & set(g["discarded"]) for g in self.grid)
