"""The passes of selection: every candidate's bypass, induce and KL on the validation prompts.

Axes: ``cand`` candidates, ``prompt`` the harmful then the harmless selection prompts.

The candidates are stacked along the batch axis with
:class:`~refusal_probe.interventions.hooks.PerRow` interventions: one pass over the harmful and
harmless prompts for each chunk of candidates serves both bypass and KL, and one more serves
induce. Screening (:mod:`refusal_probe.selection.screening`) may leave candidates unscored;
racing (:mod:`refusal_probe.selection.racing`) scores the rest on growing prompt subsets and
drops the dominated ones early. The choice among the scores is
:func:`refusal_probe.selection.selection.score_candidates`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from refusal_probe.direction.estimators import Direction
from refusal_probe.interventions.hooks import Ablate, Add, PerRow
from refusal_probe.model.loading import LoadedModel
from refusal_probe.scoring.refusal import (
    RefusalTokens,
    kl_divergence,
    map_last_logits,
    refusal_score_from_logits,
)
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.racing import RaceConfig, race
from refusal_probe.selection.screening import ablation_moment, estimated_bypass, screen


@dataclass(frozen=True)
class GridScores:
    """The measured scores of a candidate grid, as the disk cache keeps them.

    Axes: ``cand`` the scored-or-screened candidates (zero vectors and skipped late layers
    excluded), ``prompt`` the harmful then the harmless selection prompts.

    Attributes:
        scores: ``[cand, 3]`` mean bypass, induce and KL per candidate, float64; NaN where a
            candidate was screened out.
        scored: ``[cand]`` whether each candidate was scored exactly.
        estimate: ``[cand]`` the screening's first-order bypass estimate (NaN without screening).
        base: ``[prompt]`` the unmodified model's refusal log-odds.
        forward_passes: Passes the measurement took, screening included.
        base_forward_passes: Passes of the baseline scoring alone.
        seen: ``[cand]`` harmful prompts each candidate was scored on (fewer than all when
            racing dropped it; 0 when screened out).
        raced_out: ``[cand]`` whether racing dropped it before the last round.
        rows: Prompt evaluations of the candidates' passes (one candidate on one prompt, ablated
            or added), the work racing saves; exhaustive scoring runs ``cand × (h + 2 l)``.
    """

    scores: Tensor
    scored: Tensor
    estimate: Tensor
    base: Tensor
    forward_passes: int
    base_forward_passes: int
    seen: Tensor
    raced_out: Tensor
    rows: int = 0


def measure_grid(
    model: LoadedModel,
    live: list[Direction],
    harmful: list[str],
    harmless: list[str],
    tokens: RefusalTokens,
    config: DirectionConfig,
    cutoff: int,
) -> GridScores:
    """Every live candidate's scores, the screening and the baselines."""
    prompts = harmful + harmless
    nh, nl = len(harmful), len(harmless)
    batch_size = config.batch_size
    base, n_base = map_last_logits(model, prompts, lambda rows, x: x, batch_size=batch_size)
    estimate = torch.full((len(live),), math.nan, dtype=torch.float64)
    scored = torch.ones(len(live), dtype=torch.bool)
    n_screen = 0
    n_keep = config.screen
    if n_keep is not None and sum(d.layer < cutoff for d in live) > n_keep:
        moment, _, n_screen = ablation_moment(model, harmful, tokens, batch_size=batch_size)
        base_h = float(refusal_score_from_logits(base[:nh], tokens).mean())
        estimate = estimated_bypass(moment, base_h, live)
        keep = screen(estimate, n_keep, [d.layer < cutoff for d in live])
        scored = torch.zeros(len(live), dtype=torch.bool)
        scored[keep] = True
    chosen = [d for d, done in zip(live, scored.tolist(), strict=True) if done]

    def measure(
        cands: list[int], rows_h: list[int], rows_l: list[int]
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        picked = [chosen[c] for c in cands]
        return _per_prompt(model, picked, harmful, harmless, rows_h, rows_l, base, tokens, config)

    k = len(chosen)
    if config.race and k > 1:
        raced = race(
            [d.layer for d in chosen],
            nh,
            nl,
            measure,
            cutoff=cutoff,
            kl_threshold=config.kl_threshold,
            induce_threshold=config.induce_threshold,
            config=RaceConfig(seed=config.seed),
        )
        part, part_seen, part_out = raced.scores, raced.seen, raced.raced_out
        n_cand, rows = raced.forward_passes, raced.rows
    else:
        b, q, i, n_cand = measure(list(range(k)), list(range(nh)), list(range(nl)))
        part = torch.stack([b.mean(1), i.mean(1), q.mean(1)], 1)
        part_seen = torch.full((k,), nh, dtype=torch.long)
        part_out = torch.zeros(k, dtype=torch.bool)
        rows = k * (nh + 2 * nl)
    scores = torch.full((len(live), 3), math.nan, dtype=torch.float64)
    scores[scored] = part
    seen = torch.zeros(len(live), dtype=torch.long)
    seen[scored] = part_seen
    raced_out = torch.zeros(len(live), dtype=torch.bool)
    raced_out[scored] = part_out
    return GridScores(
        scores=scores,
        scored=scored,
        estimate=estimate,
        base=refusal_score_from_logits(base, tokens),
        forward_passes=n_base + n_screen + n_cand,
        base_forward_passes=n_base,
        seen=seen,
        raced_out=raced_out,
        rows=rows,
    )


def _per_prompt(
    model: LoadedModel,
    cands: list[Direction],
    harmful: list[str],
    harmless: list[str],
    rows_h: Sequence[int],
    rows_l: Sequence[int],
    base: Tensor,
    tokens: RefusalTokens,
    config: DirectionConfig,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Per-prompt bypass ``[k, h]``, KL ``[k, l]`` and induce ``[k, l]`` on the given rows."""
    k, nh = len(cands), len(harmful)
    sub_h = [harmful[r] for r in rows_h]
    sub_l = [harmless[r] for r in rows_l]
    base_rows = torch.tensor([*rows_h, *(nh + r for r in rows_l)], dtype=torch.long)
    prompts = sub_h + sub_l
    max_rows = config.max_rows
    empty = torch.empty(k, 0, dtype=torch.float64)
    if not prompts or not k:
        return empty, empty, empty.view(k, 0), 0

    # Pass 1: every candidate ablated on every prompt; rows are candidate-major.
    def ablated(rows: Sequence[int], logits: Tensor) -> Tensor:
        idx = base_rows[torch.tensor(list(rows)) % len(prompts)]
        score = refusal_score_from_logits(logits, tokens)
        return torch.stack([score, kl_divergence(base[idx], logits)], dim=1)  # [batch, 2]

    plan = PerRow(tuple((Ablate(d),) for d in cands for _ in prompts))
    shown = ("candidates ablated", "candidate", len(prompts))
    abl, n_abl = map_last_logits(
        model, prompts * k, ablated, [plan], max_batch=max_rows, shown_as=shown
    )
    abl = abl.view(k, len(prompts), 2).double()  # [cand, prompt, (score, kl)]
    bypass, kl = abl[:, : len(sub_h), 0], abl[:, len(sub_h) :, 1]
    if not sub_l:
        return bypass, kl, empty, n_abl

    # Pass 2: every candidate added at its layer on the harmless prompts.
    plan = PerRow(tuple((Add(d),) for d in cands for _ in sub_l))
    shown = ("candidates added", "candidate", len(sub_l))
    induce_fn = lambda rows, x: refusal_score_from_logits(x, tokens)  # noqa: E731
    ind, n_ind = map_last_logits(
        model, sub_l * k, induce_fn, [plan], max_batch=max_rows, shown_as=shown
    )
    return bypass, kl, ind.view(k, len(sub_l)).double(), n_abl + n_ind
