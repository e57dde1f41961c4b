"""Choosing the refusal direction among the candidates: scoring, filters, the choice.

The one-call pipeline that fits the candidates, calls this and measures separation is
:mod:`refusal_probe.selection.search`.

Axes: ``cand`` candidates (layer-major), ``prompt`` prompts of one class, ``vocab`` vocabulary.

Selection follows Arditi et al. (2024). For each candidate, on validation prompts:

* **bypass** — mean refusal log-odds on harmful prompts with the candidate ablated (lower is
  better);
* **induce** — mean refusal log-odds on harmless prompts with the raw candidate added at its layer;
* **KL** — mean ``KL(base || ablated)`` of the next-token distribution on harmless prompts.

A candidate is discarded if a score is NaN, its layer is ``>= floor(0.8 L)``, its KL exceeds 0.1 or
its induce score is not above 0; the lowest bypass among the rest wins. The whole grid is kept.
When none passes, none is chosen (``Selection.chosen is None``): the filters (the KL ceiling among
them) come before bypass is compared, since a destructive ablation also lowers the log-odds.

Screening (``DirectionConfig.screen``): on deep models the grid is large, so a first-order
estimate of every candidate's bypass (:mod:`refusal_probe.selection.screening`: one forward and
backward pass) ranks them, and only the best ``screen`` candidates below the layer cutoff are
scored exactly; the rest stay in the grid unscored, discarded as ``"screened"``, with their
estimate. Racing (``DirectionConfig.race``, :mod:`refusal_probe.selection.racing`) then scores the
rest on growing prompt subsets and drops the dominated ones early (discarded as ``"raced"``, with
the means of the prompts they saw).

The passes themselves (candidates stacked along the batch axis) are
:mod:`refusal_probe.selection.grid`'s. :attr:`Selection.forward_passes` counts what was run and
:attr:`Selection.reference_forward_passes` what the per-candidate procedure would have run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from refusal_probe.activations.cache import TensorCache, cache_key, cached
from refusal_probe.activations.capture import prompts_fingerprint
from refusal_probe.direction.estimators import Candidates
from refusal_probe.errors import DirectionError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.scoring.refusal import RefusalTokens
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.grid import GridScores, measure_grid

#: Why a candidate is out: a score is NaN, its layer is past the cutoff, its KL is too high, its
#: induce score too low; or it was not scored (a zero vector, or left out by screening); or racing
#: dropped it after part of the prompts (its scores are then those prompts' means).
DiscardReason = Literal["nan", "layer", "kl", "induce", "zero", "screened", "raced"]
DISCARD_REASONS: tuple[DiscardReason, ...] = get_args(DiscardReason)


@dataclass(frozen=True)
class CandidateScore:
    """The selection scores of one candidate.

    Attributes:
        layer: The candidate's layer.
        position: Its position (negative offset).
        bypass: Mean refusal log-odds on harmful prompts with it ablated.
        induce: Mean refusal log-odds on harmless prompts with it added.
        kl: Mean KL(base || ablated) on harmless prompts, nats.
        discarded: Why it was discarded: any of ``"layer"``, ``"kl"``, ``"induce"``, ``"nan"``;
            or ``{"zero"}`` for a zero vector and ``{"screened"}`` for one screening left out,
            neither scored. Empty if it passed every filter. Unscored cells have NaN scores.
        estimate: First-order bypass estimate from screening (``None`` when it did not run).
        seen: Harmful prompts it was scored on, when racing dropped it early (``None``: all).
    """

    layer: int
    position: int
    bypass: float
    induce: float
    kl: float
    discarded: frozenset[DiscardReason]
    estimate: float | None = None
    seen: int | None = None

    @property
    def passed(self) -> bool:
        """Whether it passed every filter."""
        return not self.discarded

    def to_dict(self) -> dict[str, Any]:
        """Plain data; the discard reasons as a sorted list (unscored cells keep NaN scores)."""
        return {**asdict(self), "discarded": sorted(self.discarded)}


@dataclass(frozen=True)
class Selection:
    """The scored grid and the chosen candidate.

    Attributes:
        grid: Every candidate's scores, layer-major.
        chosen: The chosen candidate's scores: the lowest bypass among those that passed every
            filter; ``None`` when none passed (there is no causal direction to choose).
        passed_filters: Whether any candidate passed (``chosen is not None``).
        baseline_harmful: Mean refusal log-odds of the harmful prompts, no intervention.
        baseline_harmless: Mean refusal log-odds of the harmless prompts, no intervention.
        n_harmful: Harmful prompts scored.
        n_harmless: Harmless prompts scored.
        forward_passes: Forward passes run by this call (baseline and screening included; 0 on a
            cache hit).
        reference_forward_passes: Passes of the per-candidate procedure (baseline, then one pass
            per candidate per score, each prompt set in one batch).
        rows: Prompt evaluations of the candidates' passes (0 on a cache hit).
        exhaustive_rows: What scoring every scored candidate on every prompt takes (racing's
            saving is the difference).
    """

    grid: tuple[CandidateScore, ...]
    chosen: CandidateScore | None
    passed_filters: bool
    baseline_harmful: float
    baseline_harmless: float
    n_harmful: int
    n_harmless: int
    forward_passes: int
    reference_forward_passes: int
    rows: int = 0
    exhaustive_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (unscored cells' NaN scores become ``None``, valid JSON)."""
        data = asdict(self)
        data["grid"] = [c.to_dict() for c in self.grid]
        data["chosen"] = self.chosen.to_dict() if self.chosen is not None else None
        for cell in [*data["grid"], *([data["chosen"]] if self.chosen is not None else [])]:
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
    extra: dict[str, Any] = {"screen": config.screen} if config.screen is not None else {}
    if config.race:
        extra.update(race=True, seed=config.seed)
    key = cache_key(
        model.key,
        "selection",
        grid=2,  # GridScores with seen/raced_out
        candidates=[d.sha256 for d in live],
        tokens=list(tokens.ids),
        harmful=prompts_fingerprint(harmful),
        harmless=prompts_fingerprint(harmless),
        **extra,
    )
    grid_scores, hit = cached(
        cache,
        key,
        lambda: measure_grid(model, live, harmful, harmless, tokens, config, cutoff),
        GridScores,
    )
    nh, nl = len(harmful), len(harmless)
    base_scores = grid_scores.base
    scores = {
        id(d): (tuple(float(x) for x in row), bool(done), float(e), int(m), bool(out))
        for d, row, done, e, m, out in zip(
            live,
            grid_scores.scores,
            grid_scores.scored,
            grid_scores.estimate,
            grid_scores.seen,
            grid_scores.raced_out,
            strict=True,
        )
    }

    grid = []
    for d in dirs:
        (b, i, q), done, e, m, out = scores.get(id(d), ((math.nan,) * 3, False, math.nan, 0, False))
        est = None if math.isnan(e) else e
        why: frozenset[DiscardReason]
        if d.is_zero:
            why = frozenset({"zero"})
        elif id(d) not in scores:  # a late layer left unscored (score_late_layers=False)
            why = frozenset({"layer"})
        elif not done:
            why = frozenset({"screened"})
        else:
            why = _why_discarded(d.layer, b, i, q, cutoff, config)
            why |= {"raced"} if out else set()
        grid.append(CandidateScore(d.layer, d.position, b, i, q, why, est, m if out else None))
    if all(math.isnan(c.bypass) for c in grid):
        raise DirectionError(
            f"every one of the {len(grid)} candidates is zero or scored NaN; the harmful "
            "and harmless activations do not differ at any layer"
        )
    # Only candidates that passed every filter (the KL ceiling included) compete on bypass.
    passed = [c for c in grid if c.passed]
    chosen = min(passed, key=lambda c: (c.bypass, c.layer, c.position)) if passed else None
    return Selection(
        grid=tuple(grid),
        chosen=chosen,
        passed_filters=chosen is not None,
        baseline_harmful=float(base_scores[:nh].mean()),
        baseline_harmless=float(base_scores[nh:].mean()),
        n_harmful=nh,
        n_harmless=nl,
        forward_passes=0 if hit else grid_scores.forward_passes,
        reference_forward_passes=grid_scores.base_forward_passes + 3 * len(dirs),
        rows=0 if hit else grid_scores.rows,
        exhaustive_rows=int(grid_scores.scored.sum()) * (nh + 2 * nl),
    )


def _why_discarded(
    layer: int, bypass: float, induce: float, kl: float, cutoff: int, config: DirectionConfig
) -> frozenset[DiscardReason]:
    reasons: set[DiscardReason] = set()
    if any(math.isnan(v) for v in (bypass, induce, kl)):
        reasons.add("nan")
    if layer >= cutoff:
        reasons.add("layer")
    if kl > config.kl_threshold:
        reasons.add("kl")
    if not induce > config.induce_threshold:
        reasons.add("induce")
    return frozenset(reasons)
