"""Finding the refusal direction in one call: fit the candidates, select one, measure separation.

Data flow: prompts (fit, selection and evaluation splits) → activations at every layer's
``resid_pre`` and post-instruction position (:mod:`refusal_probe.activations.capture`) →
difference-of-means candidates (:mod:`refusal_probe.direction.estimators`) → the causal choice
among them (:mod:`refusal_probe.selection.selection`) → per-layer separation of the held-out split.

When no candidate passes selection's filters there is no causal direction; the direction reported
(and written for the monitor and a later ``--baseline``) is then the candidate that best separates
the *validation* split's harmful from harmless prompts (AUROC of the projections, unfiltered
prompts), so the test split still measures a direction it did not choose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from refusal_probe.activations.cache import TensorCache, cache_key, cached
from refusal_probe.activations.capture import Activations, capture, prompts_fingerprint
from refusal_probe.activations.sites import POST_INSTRUCTION, all_layers
from refusal_probe.direction.estimators import (
    Candidates,
    Direction,
    difference_of_means,
    offsets_of,
    pca_of_differences,
)
from refusal_probe.direction.separation import LayerSeparation, project, separation_curve
from refusal_probe.errors import DirectionError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Fixtures, stratified_sample
from refusal_probe.scoring.refusal import (
    RefusalTokens,
    filter_by_score,
    map_last_logits,
    refusal_score_from_logits,
    refusal_tokens,
)
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.selection import Selection, score_candidates
from refusal_probe.stats.separation import auroc

#: How the reported direction was chosen: by its causal effect (selection), or, when no candidate
#: passed selection's filters, as the best separator of the validation split.
ChosenBy = Literal["causal", "validation_separation"]


@dataclass(frozen=True, eq=False)
class DirectionResult:
    """Everything :func:`find_refusal_direction` found.

    Attributes:
        direction: The selected direction (difference of means): selection's choice, or the best
            separator of the validation split when there is none (see ``chosen_by``).
        candidates: The whole candidate grid.
        selection: The scored grid and the choice.
        separation: Per-layer separation of the held-out split by the candidates at the selected
            position, with bootstrap intervals.
        alternative: The same curve for the alternative estimator (PCA of paired differences);
            empty if it was not run.
        alternative_cosine: Cosine between the two estimators' candidates, per layer.
        refusal_tokens: The refusal tokens used.
        prompt_counts: Prompts used per role: ``{"fit": {"harmful": [kept, total], ...}, ...}``.
        forward_passes: Passes run per stage (captures excluded: the disk cache may serve them).
        wall_s: Seconds for extraction and selection together.
        model_fingerprint: The model's identity fingerprint.
        config: The configuration used.
        chosen_by: ``"causal"`` (selection chose it) or ``"validation_separation"`` (no candidate
            passed selection's filters).
        validation_auroc: ``(layer, position, AUROC)`` of every nonzero candidate on the
            validation split, unfiltered; measured only when there is no causal choice.
        projections: The held-out split's projections on ``direction``, ``"harmful"`` and
            ``"harmless"``, in split order (what breakdowns of the separation read).
    """

    direction: Direction
    candidates: Candidates
    selection: Selection
    separation: tuple[LayerSeparation, ...]
    alternative: tuple[LayerSeparation, ...]
    alternative_cosine: tuple[float, ...]
    refusal_tokens: RefusalTokens
    prompt_counts: dict[str, dict[str, list[int]]]
    forward_passes: dict[str, int]
    wall_s: float
    model_fingerprint: str
    config: DirectionConfig = field(default_factory=DirectionConfig)
    chosen_by: ChosenBy = "causal"
    validation_auroc: tuple[tuple[int, int, float], ...] = ()
    projections: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def __repr__(self) -> str:
        s, c = self.selected_separation.stats.auroc, self.selection.chosen
        how = f"bypass {c.bypass:.2f}" if c is not None else "no causal direction"
        return f"DirectionResult({self.direction!r}, AUROC {s}, {how}, {self.wall_s:.1f}s)"

    @property
    def selected_separation(self) -> LayerSeparation:
        """The separation statistics at the selected layer."""
        return next(c for c in self.separation if c.layer == self.direction.layer)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data for the report."""
        return {
            "direction": self.direction.to_dict(),
            "selection": self.selection.to_dict(),
            "separation": [c.to_dict() for c in self.separation],
            "selected_separation": self.selected_separation.to_dict(),
            "alternative": {
                "method": "pca_pairs" if self.alternative else None,
                "separation": [c.to_dict() for c in self.alternative],
                "cosine_with_diff_means": list(self.alternative_cosine),
            },
            "refusal_tokens": self.refusal_tokens.to_dict(),
            "prompt_counts": self.prompt_counts,
            "forward_passes": self.forward_passes,
            "wall_s": self.wall_s,
            "model_fingerprint": self.model_fingerprint,
            "config": self.config.to_dict(),
            "chosen_by": self.chosen_by,
            "validation_auroc": [list(c) for c in self.validation_auroc],
            "projections": {k: list(v) for k, v in self.projections.items()},
        }


def find_refusal_direction(
    model: LoadedModel,
    fixtures: Fixtures,
    config: DirectionConfig | None = None,
    *,
    cache: TensorCache | None = None,
) -> DirectionResult:
    """Fit the candidates, select the refusal direction, and measure its separation.

    Fits difference-of-means candidates at every layer's ``resid_pre`` and every post-instruction
    position on ``config.fit_split``, scores them on ``config.select_split`` (see the module
    docstring), and measures per-layer separation on ``config.eval_split``.

    Args:
        model: The loaded model.
        fixtures: Prompt fixtures with harmful and harmless splits.
        config: Splits, thresholds and batching (defaults: the reference method's).
        cache: Disk cache for the activation captures.

    Raises:
        ScoringError: No refusal tokens, or too few prompts left after filtering.
        DirectionError: A split is empty.
    """
    config = config or DirectionConfig()
    t0 = time.perf_counter()
    tokens = refusal_tokens(
        model.tokenizer, config.token_phrases, override=config.refusal_token_override
    )
    fit_h, fit_l = split_texts(fixtures, config.fit_split, config.n_fit)
    sel_h, sel_l = split_texts(fixtures, config.select_split, config.n_select)
    counts: dict[str, dict[str, list[int]]] = {
        "fit": {"harmful": [len(fit_h)] * 2, "harmless": [len(fit_l)] * 2},
        "select": {"harmful": [len(sel_h)] * 2, "harmless": [len(sel_l)] * 2},
    }
    passes = {"filter": 0}
    if config.filter_prompts:
        fit_h, fit_l, sel_h, sel_l, passes["filter"] = _filter(
            model, tokens, fit_h, fit_l, sel_h, sel_l, config, cache
        )
        for role, h, l_ in (("fit", fit_h, fit_l), ("select", sel_h, sel_l)):
            counts[role]["harmful"][0], counts[role]["harmless"][0] = len(h), len(l_)
    acts_h, acts_l = _capture_pair(model, fit_h, fit_l, config, cache)
    arch = model.identity.architecture
    candidates = difference_of_means(acts_h, acts_l, architecture=arch)
    candidates = candidates.restrict(config.positions, config.layers)
    selection = score_candidates(model, candidates, sel_h, sel_l, tokens, config, cache=cache)
    passes["selection"] = selection.forward_passes
    passes["selection_reference"] = selection.reference_forward_passes
    passes["selection_rows"] = selection.rows
    passes["selection_rows_exhaustive"] = selection.exhaustive_rows
    chosen_by: ChosenBy = "causal"
    val_auroc: list[tuple[int, int, float]] = []
    if selection.chosen is not None:
        direction = candidates.direction(selection.chosen.layer, selection.chosen.position)
    else:
        chosen_by = "validation_separation"
        val_h, val_l = split_texts(fixtures, config.select_split, config.n_select)
        val_auroc = _cell_auroc(candidates, *_capture_pair(model, val_h, val_l, config, cache))
        best = max(val_auroc, key=lambda c: (c[2], -c[0], c[1]))
        direction = candidates.direction(best[0], best[1])
    wall = time.perf_counter() - t0

    ev_h, ev_l = split_texts(fixtures, config.eval_split, config.n_eval)
    counts["eval"] = {"harmful": [len(ev_h)] * 2, "harmless": [len(ev_l)] * 2}
    eval_h, eval_l = _capture_pair(model, ev_h, ev_l, config, cache)
    curve = separation_curve(candidates, eval_h, eval_l, direction.position, config.bootstrap)
    i = [s.layer for s in eval_h.sites].index(direction.layer)
    j = offsets_of(eval_h).index(direction.position)
    projections = {
        name: tuple(float(x) for x in project(acts.values[:, i, j], direction))
        for name, acts in (("harmful", eval_h), ("harmless", eval_l))
    }
    alt_curve: list[LayerSeparation] = []
    alt_cos: list[float] = []
    if config.alternative:
        alt = pca_of_differences(acts_h, acts_l, seed=config.seed, architecture=arch)
        alt = alt.restrict(candidates.offsets, candidates.layers)
        alt_curve = separation_curve(alt, eval_h, eval_l, direction.position, config.bootstrap)
        j = candidates.offsets.index(direction.position)
        alt_cos = [
            float(c)
            for c in torch.nn.functional.cosine_similarity(
                candidates.vectors[:, j], alt.vectors[:, j], dim=-1
            )
        ]
    return DirectionResult(
        direction,
        candidates,
        selection,
        tuple(curve),
        tuple(alt_curve),
        tuple(alt_cos),
        tokens,
        counts,
        passes,
        wall,
        model.identity.fingerprint,
        config,
        chosen_by,
        tuple(val_auroc),
        projections,
    )


def _cell_auroc(
    candidates: Candidates, harmful: Activations, harmless: Activations
) -> list[tuple[int, int, float]]:
    """``(layer, position, AUROC)`` of every nonzero candidate on the given held-out prompts."""
    layers, offsets = [s.layer for s in harmful.sites], offsets_of(harmful)
    out = []
    for d in candidates.all():
        if d.is_zero:
            continue
        i, j = layers.index(d.layer), offsets.index(d.position)
        h, l_ = project(harmful.values[:, i, j], d), project(harmless.values[:, i, j], d)
        out.append((d.layer, d.position, auroc(h.numpy(), l_.numpy())))
    if not out:
        raise DirectionError("every candidate is a zero vector; there is no direction to report")
    return out


def candidate_directions(
    model: LoadedModel,
    fixtures: Fixtures,
    *,
    split: str = "train",
    n: int | None = None,
    config: DirectionConfig | None = None,
    cache: TensorCache | None = None,
) -> Candidates:
    """Difference-of-means candidates on one split, unfiltered (for comparing checkpoints)."""
    config = config or DirectionConfig()
    h, l_ = split_texts(fixtures, split, n)
    acts_h, acts_l = _capture_pair(model, h, l_, config, cache)
    return difference_of_means(acts_h, acts_l, architecture=model.identity.architecture)


def split_texts(
    fixtures: Fixtures, split: str, n: int | None = None
) -> tuple[list[str], list[str]]:
    """The harmful and harmless texts of one split; with ``n``, at most ``n`` of each.

    The ``n`` are a seeded sample stratified by category (:func:`stratified_sample`), in file
    order, never the file's first ``n``: prompt files are often sorted by category, and the first
    16 of the natural set's validation split are two harm categories and three harmless topics.

    Raises:
        DirectionError: A class has no prompts in the split.
    """
    h, l_ = fixtures.harmful.split(split), fixtures.harmless.split(split)
    if not h or not l_:
        raise DirectionError(
            f"split {split!r} has {len(h)} harmful and {len(l_)} harmless prompts; both "
            "classes need prompts"
        )
    if n is not None:
        h = stratified_sample(h, n, f"{split}-harmful") if len(h) > n else h
        l_ = stratified_sample(l_, n, f"{split}-harmless") if len(l_) > n else l_
    return [p.text for p in h], [p.text for p in l_]


@dataclass(frozen=True)
class BaseScores:
    """The refusal log-odds of prompts on the unmodified model, as the disk cache keeps them.

    Attributes:
        scores: ``[prompt]`` refusal log-odds, float64, in input order.
        forward_passes: Passes the scoring took.
    """

    scores: Tensor
    forward_passes: int


def _filter(
    model: LoadedModel,
    tokens: RefusalTokens,
    fit_h: list[str],
    fit_l: list[str],
    sel_h: list[str],
    sel_l: list[str],
    config: DirectionConfig,
    cache: TensorCache | None,
) -> tuple[list[str], list[str], list[str], list[str], int]:
    """Filter fit and selection prompts by their base refusal score, in one batched scoring run."""
    everything = fit_h + fit_l + sel_h + sel_l

    def score() -> BaseScores:
        s, n = map_last_logits(
            model,
            everything,
            lambda rows, x: refusal_score_from_logits(x, tokens),
            batch_size=config.batch_size,
        )
        return BaseScores(s, n)

    key = cache_key(
        model.key, "scores", prompts=prompts_fingerprint(everything), tokens=list(tokens.ids)
    )
    measured, hit = cached(cache, key, score, BaseScores)
    scores, passes = measured.scores, 0 if hit else measured.forward_passes
    a, b, c = len(fit_h), len(fit_h) + len(fit_l), len(fit_h) + len(fit_l) + len(sel_h)
    fh, fl = filter_by_score(
        fit_h, fit_l, scores[:a], scores[a:b], what=f"{config.fit_split} prompts"
    )
    sh, sl = filter_by_score(
        sel_h, sel_l, scores[b:c], scores[c:], what=f"{config.select_split} prompts"
    )
    return fh, fl, sh, sl, passes


def _capture_pair(
    model: LoadedModel,
    harmful: list[str],
    harmless: list[str],
    config: DirectionConfig,
    cache: TensorCache | None,
) -> tuple[Activations, Activations]:
    sites = all_layers(model.n_layers, "resid_pre")
    kw: dict[str, Any] = {"batch_size": config.batch_size, "cache": cache}
    return (
        capture(model, harmful, sites, POST_INSTRUCTION, **kw),
        capture(model, harmless, sites, POST_INSTRUCTION, **kw),
    )
