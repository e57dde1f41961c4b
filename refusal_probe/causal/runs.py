"""The forward passes of a causal validation, and the configuration they run under.

Axes: ``prompt`` the harmful then the harmless prompts, ``coefficient`` the dose-response's
addition coefficients, ``harmless`` the harmless prompts, ``vocab`` the vocabulary.

Four conditions are judged on greedy completions (:data:`CONDITIONS`): harmful and harmless
prompts as they are, harmful prompts with the direction ablated, harmless prompts with it added.
Their generations share batches through one :class:`~refusal_probe.interventions.hooks.PerRow`
plan, and the logit-proxy scores (the dose-response, the KL of the ablation) are read in the
same passes wherever they can be. :func:`run_conditions` returns the raw measurements, a
:class:`ValidationRuns`, which the disk cache keeps; :mod:`refusal_probe.causal.validation` turns
them into rates, effects and intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from refusal_probe.activations.sites import logits_hook_name
from refusal_probe.direction.estimators import Direction
from refusal_probe.interventions.hooks import Ablate, Add, PerRow, Span
from refusal_probe.model.loading import LoadedModel
from refusal_probe.scoring.generation import MAX_NEW_TOKENS, generate
from refusal_probe.scoring.refusal import (
    REFUSAL_PHRASES,
    RefusalTokens,
    kl_divergence,
    map_last_logits,
    refusal_score_from_logits,
    refusal_tokens,
)
from refusal_probe.scoring.reply import JudgeRule
from refusal_probe.stats.intervals import LEVEL, N_RESAMPLES, SEED, Bootstrap

#: Addition coefficients of the dose-response curve.
COEFFICIENTS: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class ValidationConfig:
    """How a direction is validated. Plain data.

    Attributes:
        split: Held-out split the tests run on.
        n_prompts: Prompts per class (``None``: all of the split).
        max_new_tokens: Generation bound of the judge.
        phrases: The judge's refusal phrases.
        judge: The judge: ``"reply"`` reads each whole completion, ``"substring"`` looks for a
            refusal phrase anywhere (:mod:`refusal_probe.scoring.reply`).
        token_phrases: Phrases the refusal tokens of the logit proxy are derived from.
        coefficients: Addition coefficients of the dose-response curve.
        alpha: Coefficient of the addition test.
        add_span: Where the addition test adds the vector while generating: ``"prompt"`` (the
            prompt's positions; the reply is the model's own) or ``"all"`` (generated tokens
            too, as Arditi et al.). Small models derail under ``"all"``: every generated token
            is pushed by a class-mean gap it never carried, and the judge then sees garbled
            text instead of a refusal.
        batch_size: Rows per forward pass (``None``: chosen from free memory).
        n_resamples: Bootstrap resamples for mean-score and KL intervals.
        seed: Bootstrap seed.
        level: Confidence level.
        refusal_token_override: Explicit refusal token ids or strings.
        n_random: Random directions whose ablation KL is the reference cost of the KL check
            (seeded Gaussian vectors of the direction's width, norm, layer and position).
    """

    split: str = "test"
    n_prompts: int | None = None
    max_new_tokens: int = MAX_NEW_TOKENS
    phrases: tuple[str, ...] = REFUSAL_PHRASES
    judge: JudgeRule = "reply"
    token_phrases: tuple[str, ...] = REFUSAL_PHRASES
    coefficients: tuple[float, ...] = COEFFICIENTS
    alpha: float = 1.0
    add_span: Span = "prompt"
    batch_size: int | None = None
    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    level: float = LEVEL
    refusal_token_override: tuple[int | str, ...] | None = None
    n_random: int = 4

    @property
    def bootstrap(self) -> Bootstrap:
        """The intervals' bootstrap."""
        return Bootstrap(self.n_resamples, self.seed, self.level)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def validation_tokens(model: LoadedModel, config: ValidationConfig) -> RefusalTokens:
    """The refusal tokens of the logit proxy, as ``config`` derives or overrides them."""
    return refusal_tokens(
        model.tokenizer, config.token_phrases, override=config.refusal_token_override
    )


def random_directions(direction: Direction, n: int, seed: int) -> list[Direction]:
    """``n`` seeded Gaussian directions of ``direction``'s width, norm, layer and position.

    Ablation removes a unit direction at every block, so only its orientation matters; the norm
    and layer are kept so that the values print and store like the direction they stand beside.
    """
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(seed * 1000 + k)
        v = torch.randn(direction.d_model, generator=g, dtype=torch.float64)
        v *= direction.vector.norm() / v.norm()
        out.append(
            Direction(
                v,
                direction.layer,
                direction.position,
                "random",
                0,
                0,
                architecture=direction.architecture,
            )
        )
    return out


#: The four judged conditions, in the order their completions are stored.
CONDITIONS = ("harmful_baseline", "harmless_baseline", "harmful_ablated", "harmless_added")


@dataclass(frozen=True)
class ValidationRuns:
    """What the forward passes of a validation measured, as the disk cache keeps them.

    Axes: ``prompt`` the harmful then the harmless prompts, ``coefficient`` the dose-response's
    coefficients, ``harmless`` the harmless prompts.

    Attributes:
        completions: The greedy completions of the four conditions, in :data:`CONDITIONS` order.
        by_alpha: ``[coefficient, prompt]`` refusal log-odds with the vector added.
        base: ``[prompt]`` refusal log-odds of the unmodified model.
        ablated: ``[prompt]`` refusal log-odds with the direction ablated.
        kl: ``[harmless]`` KL of the next-token distribution, ablated against unmodified.
        kl_random: ``[random, harmless]`` the same KL with each random direction of
            :func:`random_directions` ablated instead (the reference cost).
        forward_passes: Passes the generations and scorings took.
    """

    completions: tuple[str, ...]
    by_alpha: Tensor
    base: Tensor
    ablated: Tensor
    kl: Tensor
    kl_random: Tensor
    forward_passes: int


def run_conditions(
    model: LoadedModel,
    direction: Direction,
    harmful: list[str],
    harmless: list[str],
    config: ValidationConfig,
) -> ValidationRuns:
    """Every forward pass of a validation: completions of the four conditions, proxy scores, KL.

    Conditions share batches through one :class:`PerRow` plan; so do the scoring runs that
    remain. The prompt pass of each generation yields its condition's next-token logits, which
    are read there rather than run again: the baseline's (its scores, and the reference of the
    KL on harmless prompts), the ablated harmful prompts' and the harmless prompts' with the
    vector added at ``config.alpha`` (in the prompt pass every position is the prompt's, so that
    is the dose-response's addition at that coefficient, whatever ``add_span``). Scoring passes
    remain for the ablated harmless prompts (the KL) and the other coefficients.
    """
    ablate = Ablate(direction)
    plans = {
        "harmful_baseline": (),
        "harmless_baseline": (),
        "harmful_ablated": (ablate,),
        "harmless_added": (Add(direction, alpha=config.alpha, span=config.add_span),),
    }
    sets = {
        "harmful_baseline": harmful,
        "harmless_baseline": harmless,
        "harmful_ablated": harmful,
        "harmless_added": harmless,
    }
    prompts = [p for c in CONDITIONS for p in sets[c]]
    start = dict(
        zip(CONDITIONS, np.cumsum([0] + [len(sets[c]) for c in CONDITIONS])[:-1], strict=True)
    )
    plan = PerRow(tuple(plans[c] for c in CONDITIONS for _ in sets[c]))
    tokens = validation_tokens(model, config)
    nh, nl = len(harmful), len(harmless)
    # each generation's first-token refusal score, read in its prompt pass
    first = torch.empty(len(prompts), dtype=torch.float64)
    reference: dict[int, Tensor] = {}  # harmless baseline logits, by harmless index

    def observe(batch: Any, rows: Sequence[int]) -> list[Any]:
        def read(logits: Tensor, hook: Any) -> None:
            x = logits[:, -1].float().cpu()  # [batch, vocab]
            first[torch.tensor(list(rows))] = refusal_score_from_logits(x, tokens)
            at = start["harmless_baseline"]
            reference.update({r - at: x[k] for k, r in enumerate(rows) if at <= r < at + nl})

        return [(logits_hook_name(), read)]

    texts, gen_passes = generate(
        model,
        prompts,
        [plan],
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        observe=observe,
    )

    def scores(condition: str) -> Tensor:
        return first[start[condition] : start[condition] + len(sets[condition])]

    ref = torch.stack([reference[i] for i in range(nl)])  # [harmless, vocab]
    # (intervention, prompt) per remaining row: the ablated harmless prompts (the direction, then
    # each random one), then each nonzero coefficient's additions (at config.alpha the harmless
    # ones were read while generating)
    randoms = random_directions(direction, config.n_random, config.seed)
    jobs: list[tuple[Ablate | Add, str]] = [
        (a, p) for a in [ablate, *map(Ablate, randoms)] for p in harmless
    ]
    n_kl = len(jobs)
    for a in config.coefficients:
        if a != 0.0:
            todo = harmful if a == config.alpha else harmful + harmless
            jobs += [(Add(direction, alpha=a), p) for p in todo]

    def reduce(idx: Sequence[int], logits: Tensor) -> Tensor:
        kl = torch.full((len(idx),), float("nan"), dtype=torch.float64)
        ab = [j for j, i in enumerate(idx) if i < n_kl]  # the ablation rows come first
        if ab:
            kl[ab] = kl_divergence(ref[torch.tensor([idx[j] % nl for j in ab])], logits[ab])
        return torch.stack([refusal_score_from_logits(logits, tokens), kl], 1)

    out, n_rows = map_last_logits(
        model,
        [p for _, p in jobs],
        reduce,
        [PerRow(tuple((iv,) for iv, _ in jobs))],
        batch_size=config.batch_size,
    )
    base = torch.cat([scores("harmful_baseline"), scores("harmless_baseline")])
    by_alpha = base.repeat(len(config.coefficients), 1)  # [coefficient, prompt]
    row = n_kl
    for k, a in enumerate(config.coefficients):
        if a == 0.0:
            continue
        m = nh if a == config.alpha else nh + nl
        by_alpha[k, :m] = out[row : row + m, 0]
        if a == config.alpha:
            by_alpha[k, nh:] = scores("harmless_added")
        row += m
    return ValidationRuns(
        completions=tuple(texts),
        by_alpha=by_alpha,
        base=base,
        ablated=torch.cat([scores("harmful_ablated"), out[:nl, 0]]),
        kl=out[:nl, 1].contiguous(),
        kl_random=out[nl:n_kl, 1].reshape(config.n_random, nl).contiguous(),
        forward_passes=gen_passes + n_rows,
    )
