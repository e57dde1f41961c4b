"""Choosing the refusal direction among the candidates, and the one-call pipeline that finds it.

Axes: ``cand`` candidates (layer-major), ``prompt`` prompts of one class, ``vocab`` vocabulary.

Selection follows Arditi et al. (2024). For each candidate, on validation prompts:

* **bypass** — mean refusal log-odds on harmful prompts with the candidate ablated (lower is
  better);
* **induce** — mean refusal log-odds on harmless prompts with the raw candidate added at its layer;
* **KL** — mean ``KL(base || ablated)`` of the next-token distribution on harmless prompts.

A candidate is discarded if a score is NaN, its layer is ``>= floor(0.8 L)``, its KL exceeds 0.1 or
its induce score is not above 0; the lowest bypass among the rest wins. The whole grid is kept.

Screening (``DirectionConfig.screen``): on deep models the grid is large, so a first-order estimate
of every candidate's bypass (:mod:`refusal_probe.screening`: one forward and backward pass) ranks
them, and only the best ``screen`` candidates below the layer cutoff are scored exactly; the rest
stay in the grid unscored, discarded as ``"screened"``, with their estimate.

Speed: instead of one forward pass per candidate per score, the candidates are stacked along the
batch axis with :class:`~refusal_probe.interventions.PerRow` interventions: one pass over the
harmful and harmless prompts for each chunk of candidates serves both bypass and KL, and one more
serves induce. :attr:`Selection.forward_passes` counts what was run and
:attr:`Selection.reference_forward_passes` what the per-candidate procedure would have run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from refusal_probe.cache import TensorCache
from refusal_probe.capture import Activations, capture, prompts_fingerprint
from refusal_probe.directions import (
    Candidates,
    Direction,
    LayerSeparation,
    difference_of_means,
    pca_of_differences,
    separation_curve,
)
from refusal_probe.errors import DirectionError
from refusal_probe.interventions import Ablate, Add, PerRow
from refusal_probe.models import LoadedModel
from refusal_probe.prompts import Fixtures
from refusal_probe.scoring import (
    REFUSAL_PHRASES,
    RefusalTokens,
    cached,
    filter_by_score,
    kl_divergence,
    map_last_logits,
    measurement_key,
    refusal_score_from_logits,
    refusal_tokens,
)
from refusal_probe.screening import ablation_moment, estimated_bypass, screen
from refusal_probe.sites import POST_INSTRUCTION, all_layers
from refusal_probe.stats import N_RESAMPLES, SEED


@dataclass(frozen=True)
class DirectionConfig:
    """How the direction is found. Plain data; every threshold is here.

    Attributes:
        fit_split: Split the candidates are fit on.
        select_split: Split the candidates are scored on.
        eval_split: Held-out split of the separation curve.
        n_fit: Prompts per class to fit on (``None``: all of the split).
        n_select: Prompts per class to score candidates on (the reference uses 32).
        filter_prompts: Keep only harmful prompts with refusal score > 0 and harmless ones < 0 for
            fitting and selection, as the reference does.
        max_layer_fraction: Candidates at layers ``>= floor(fraction * n_layers)`` are discarded.
        kl_threshold: Candidates whose ablation KL on harmless prompts exceeds this are discarded.
        induce_threshold: Candidates whose induce score is not above this are discarded.
        batch_size: Prompts per forward pass for capture and scoring (``None``: chosen from
            free memory, :func:`refusal_probe.devices.auto_batch_size`).
        max_rows: Most rows per forward pass when candidates are stacked along the batch (fewer
            when free memory is short).
        positions: Post-instruction positions (negative offsets) to consider; ``None``: all.
        layers: Layers to consider; ``None``: all (a sparser grid for large models).
        n_eval: Prompts per class of the held-out separation split (``None``: all).
        score_late_layers: Score candidates at layers past the cutoff too (the whole grid, as
            the reference does); ``False`` records them as discarded without spending passes.
        screen: Score exactly only this many candidates, the lowest first-order bypass
            estimates below the layer cutoff (:mod:`refusal_probe.screening`); ``None``: score
            every candidate (the reference procedure).
        alternative: Also fit the PCA-of-differences estimator and report its curve.
        n_resamples: Bootstrap resamples for the separation intervals.
        seed: Seed of the bootstrap and of the PCA pairing.
        token_phrases: Refusal phrases the refusal tokens are derived from.
        refusal_token_override: Explicit refusal token ids or strings (replaces derivation).
    """

    fit_split: str = "train"
    select_split: str = "val"
    eval_split: str = "test"
    n_fit: int | None = None
    n_select: int = 32
    filter_prompts: bool = True
    max_layer_fraction: float = 0.8
    kl_threshold: float = 0.1
    induce_threshold: float = 0.0
    batch_size: int | None = None
    max_rows: int = 512
    positions: tuple[int, ...] | None = None
    layers: tuple[int, ...] | None = None
    n_eval: int | None = None
    score_late_layers: bool = True
    screen: int | None = None
    alternative: bool = True
    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    token_phrases: tuple[str, ...] = REFUSAL_PHRASES
    refusal_token_override: tuple[int | str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class CandidateScore:
    """The selection scores of one candidate.

    Attributes:
        layer: The candidate's layer.
        position: Its position (negative offset).
        bypass: Mean refusal log-odds on harmful prompts with it ablated.
        induce: Mean refusal log-odds on harmless prompts with it added.
        kl: Mean KL(base || ablated) on harmless prompts, nats.
        discarded: Why it was discarded (``"layer"``, ``"kl"``, ``"induce"``, ``"nan"``, comma
            separated; ``"zero"`` for a zero vector and ``"screened"`` for one screening left
            out, neither scored), or ``""`` if it passed every filter. Unscored cells have NaN
            scores.
        estimate: First-order bypass estimate from screening (``None`` when it did not run).
    """

    layer: int
    position: int
    bypass: float
    induce: float
    kl: float
    discarded: str
    estimate: float | None = None

    @property
    def passed(self) -> bool:
        """Whether it passed every filter."""
        return not self.discarded


@dataclass(frozen=True)
class Selection:
    """The scored grid and the chosen candidate.

    Attributes:
        grid: Every candidate's scores, layer-major.
        chosen: The chosen candidate's scores.
        passed_filters: False when no candidate passed and the lowest bypass was taken anyway.
        baseline_harmful: Mean refusal log-odds of the harmful prompts, no intervention.
        baseline_harmless: Mean refusal log-odds of the harmless prompts, no intervention.
        n_harmful: Harmful prompts scored.
        n_harmless: Harmless prompts scored.
        forward_passes: Forward passes run by this call (baseline and screening included; 0 on a
            cache hit).
        reference_forward_passes: Passes of the per-candidate procedure (baseline, then one pass
            per candidate per score, each prompt set in one batch).
    """

    grid: tuple[CandidateScore, ...]
    chosen: CandidateScore
    passed_filters: bool
    baseline_harmful: float
    baseline_harmless: float
    n_harmful: int
    n_harmless: int
    forward_passes: int
    reference_forward_passes: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (unscored cells' NaN scores become ``None``, valid JSON)."""
        data = asdict(self)
        for cell in [*data["grid"], data["chosen"]]:
            for k in ("bypass", "induce", "kl"):
                cell[k] = None if math.isnan(cell[k]) else cell[k]
        return data


def score_candidates(
    model: LoadedModel,
    candidates: Candidates,
    harmful: Sequence[str],
    harmless: Sequence[str],
    tokens: RefusalTokens,
    config: DirectionConfig | None = None,
    *,
    cache: TensorCache | None = None,
) -> Selection:
    """Score every candidate (bypass, induce, KL), apply the filters and choose one.

    Args:
        model: The model the candidates were read from (or one of the same architecture).
        candidates: The candidate grid.
        harmful: Harmful validation prompts.
        harmless: Harmless validation prompts.
        tokens: The refusal tokens of the log-odds score.
        config: Thresholds and batching.
        cache: Disk cache for the scores (a re-run then runs no forward pass).

    Raises:
        DirectionError: A prompt set is empty.
    """
    config = config or DirectionConfig()
    harmful, harmless = list(harmful), list(harmless)
    if not harmful or not harmless:
        raise DirectionError(
            f"selection needs prompts of both classes; got {len(harmful)} harmful and "
            f"{len(harmless)} harmless"
        )
    dirs = candidates.all()
    cutoff = math.floor(config.max_layer_fraction * model.n_layers)
    # Zero vectors (layer-0 template tokens) have no direction; late layers may be skipped.
    live = [d for d in dirs if not d.is_zero and (config.score_late_layers or d.layer < cutoff)]
    extra = {"screen": config.screen} if config.screen is not None else {}
    key = measurement_key(
        model,
        "selection",
        candidates=[d.sha256 for d in live],
        tokens=list(tokens.ids),
        harmful=prompts_fingerprint(harmful),
        harmless=prompts_fingerprint(harmless),
        **extra,
    )
    raw, hit = cached(
        cache, key, lambda: _measure_grid(model, live, harmful, harmless, tokens, config, cutoff)
    )
    nh, nl = len(harmful), len(harmless)
    base_scores = raw["base"]
    # entries cached before screening existed hold neither field: everything was scored
    done_all = raw.get("scored", torch.ones(len(live), dtype=torch.bool))
    estimates = raw.get("estimate", torch.full((len(live),), math.nan))
    scores = {
        id(d): (tuple(float(x) for x in row), bool(done), float(e))
        for d, row, done, e in zip(live, raw["scores"], done_all, estimates, strict=True)
    }

    grid = []
    for d in dirs:
        (b, i, q), done, e = scores.get(id(d), ((math.nan,) * 3, False, math.nan))
        est = None if math.isnan(e) else e
        if d.is_zero:
            why = "zero"
        elif id(d) not in scores:  # a late layer left unscored (score_late_layers=False)
            why = "layer"
        elif not done:
            why = "screened"
        else:
            why = _why_discarded(d.layer, b, i, q, cutoff, config)
        grid.append(CandidateScore(d.layer, d.position, b, i, q, why, est))
    passed = [c for c in grid if c.passed]
    pool = passed or [c for c in grid if not math.isnan(c.bypass)]
    if not pool:
        raise DirectionError(
            f"every one of the {len(grid)} candidates is zero or scored NaN; the harmful "
            "and harmless activations do not differ at any layer"
        )
    chosen = min(pool, key=lambda c: (c.bypass, c.layer, c.position))
    return Selection(
        grid=tuple(grid),
        chosen=chosen,
        passed_filters=bool(passed),
        baseline_harmful=float(base_scores[:nh].mean()),
        baseline_harmless=float(base_scores[nh:].mean()),
        n_harmful=nh,
        n_harmless=nl,
        forward_passes=0 if hit else int(raw["passes"][0]),
        reference_forward_passes=int(raw["passes"][1]) + 3 * len(dirs),
    )


def _measure_grid(
    model: LoadedModel,
    live: list[Direction],
    harmful: list[str],
    harmless: list[str],
    tokens: RefusalTokens,
    config: DirectionConfig,
    cutoff: int,
) -> dict[str, Tensor]:
    """The passes of selection: ``scores [cand, (bypass, induce, kl)]``, screening and baselines.

    ``scored [cand]`` says which candidates were scored (the others have NaN scores) and
    ``estimate [cand]`` holds the screening estimates (NaN without screening).
    """
    prompts = harmful + harmless
    nh, nl = len(harmful), len(harmless)
    base, n_base = map_last_logits(model, prompts, lambda rows, x: x, batch_size=config.batch_size)
    estimate = torch.full((len(live),), math.nan, dtype=torch.float64)
    scored = torch.ones(len(live), dtype=torch.bool)
    n_screen = 0
    if config.screen is not None and sum(d.layer < cutoff for d in live) > config.screen:
        moment, _, n_screen = ablation_moment(model, harmful, tokens, batch_size=config.batch_size)
        base_h = float(refusal_score_from_logits(base[:nh], tokens).mean())
        estimate = estimated_bypass(moment, base_h, live)
        keep = screen(estimate, config.screen, [d.layer < cutoff for d in live])
        scored = torch.zeros(len(live), dtype=torch.bool)
        scored[keep] = True
    chosen = [d for d, done in zip(live, scored.tolist(), strict=True) if done]
    k = len(chosen)
    part = torch.empty(k, 3, dtype=torch.float64)
    n_abl = n_ind = 0
    if chosen:
        # Pass 1: every candidate ablated on every prompt; rows are candidate-major.
        def ablated(rows: Sequence[int], logits: Tensor) -> Tensor:
            idx = torch.tensor(list(rows)) % len(prompts)
            score = refusal_score_from_logits(logits, tokens)
            return torch.stack([score, kl_divergence(base[idx], logits)], dim=1)  # [batch, 2]

        plan = PerRow(tuple((Ablate(d),) for d in chosen for _ in prompts))
        abl, n_abl = map_last_logits(model, prompts * k, ablated, [plan], max_batch=config.max_rows)
        abl = abl.view(k, len(prompts), 2)  # [cand, prompt, (score, kl)]
        part[:, 0], part[:, 2] = abl[:, :nh, 0].mean(1), abl[:, nh:, 1].mean(1)

        # Pass 2: every candidate added at its layer on the harmless prompts.
        plan = PerRow(tuple((Add(d),) for d in chosen for _ in harmless))
        ind, n_ind = map_last_logits(
            model,
            harmless * k,
            lambda rows, x: refusal_score_from_logits(x, tokens),
            [plan],
            max_batch=config.max_rows,
        )
        part[:, 1] = ind.view(k, nl).mean(1)
    scores = torch.full((len(live), 3), math.nan, dtype=torch.float64)
    scores[scored] = part
    return {
        "scores": scores,
        "scored": scored,
        "estimate": estimate,
        "base": refusal_score_from_logits(base, tokens),
        "passes": torch.tensor([n_base + n_screen + n_abl + n_ind, n_base]),
    }


def _why_discarded(
    layer: int, bypass: float, induce: float, kl: float, cutoff: int, config: DirectionConfig
) -> str:
    reasons = []
    if any(math.isnan(v) for v in (bypass, induce, kl)):
        reasons.append("nan")
    if layer >= cutoff:
        reasons.append("layer")
    if kl > config.kl_threshold:
        reasons.append("kl")
    if not induce > config.induce_threshold:
        reasons.append("induce")
    return ",".join(reasons)


# ---------------------------------------------------------------------------------------------
# the pipeline


@dataclass(frozen=True, eq=False)
class DirectionResult:
    """Everything :func:`find_refusal_direction` found.

    Attributes:
        direction: The selected direction (difference of means).
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

    def __repr__(self) -> str:
        s = self.selected_separation.stats.auroc
        return (
            f"DirectionResult({self.direction!r}, AUROC {s}, "
            f"bypass {self.selection.chosen.bypass:.2f}, {self.wall_s:.1f}s)"
        )

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
    wall = time.perf_counter() - t0
    direction = candidates.direction(selection.chosen.layer, selection.chosen.position)

    ev_h, ev_l = split_texts(fixtures, config.eval_split, config.n_eval)
    counts["eval"] = {"harmful": [len(ev_h)] * 2, "harmless": [len(ev_l)] * 2}
    eval_h, eval_l = _capture_pair(model, ev_h, ev_l, config, cache)
    kw = {"n_resamples": config.n_resamples, "seed": config.seed}
    curve = separation_curve(candidates, eval_h, eval_l, direction.position, **kw)
    alt_curve: list[LayerSeparation] = []
    alt_cos: list[float] = []
    if config.alternative:
        alt = pca_of_differences(acts_h, acts_l, seed=config.seed, architecture=arch)
        alt = alt.restrict(candidates.offsets, candidates.layers)
        alt_curve = separation_curve(alt, eval_h, eval_l, direction.position, **kw)
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
    )


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
    """The harmful and harmless texts of one split (the first ``n`` of each, if given).

    Raises:
        DirectionError: A class has no prompts in the split.
    """
    h, l_ = fixtures.harmful.texts(split), fixtures.harmless.texts(split)
    if not h or not l_:
        raise DirectionError(
            f"split {split!r} has {len(h)} harmful and {len(l_)} harmless prompts; both "
            "classes need prompts"
        )
    return (h[:n], l_[:n]) if n is not None else (h, l_)


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

    def score() -> dict[str, Tensor]:
        s, n = map_last_logits(
            model,
            everything,
            lambda rows, x: refusal_score_from_logits(x, tokens),
            batch_size=config.batch_size,
        )
        return {"scores": s, "passes": torch.tensor([n])}  # 1-D: the cache cannot hash 0-D

    key = measurement_key(
        model, "scores", prompts=prompts_fingerprint(everything), tokens=list(tokens.ids)
    )
    raw, hit = cached(cache, key, score)
    scores, passes = raw["scores"], 0 if hit else int(raw["passes"][0])
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
    kw: dict[str, Any] = {"batch_size": config.batch_size, "cache": cache, "progress": False}
    return (
        capture(model, harmful, sites, POST_INSTRUCTION, **kw),
        capture(model, harmless, sites, POST_INSTRUCTION, **kw),
    )
