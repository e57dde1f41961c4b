"""Causal validation of a refusal direction, on one checkpoint or transferred to another.

Axes: ``prompt`` prompts, ``alpha`` addition coefficients.

A direction that *mediates* refusal must pass three tests on held-out prompts (Arditi et al. 2024):
ablating it makes the model comply with harmful requests; adding it makes the model refuse harmless
ones; and ablating it costs little elsewhere (small KL on harmless prompts). Refusal is judged on
greedy completions by the substring judge, with Wilson intervals; a dose-response curve of the
refusal probability ``P_R`` (logit proxy) against the addition coefficient shows the effect is
graded, not a cliff.

Baseline and intervened runs share forward passes: every condition is a row plan of one
:class:`~refusal_probe.interventions.hooks.PerRow` intervention.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from refusal_probe.activations.cache import TensorCache, cache_key, cached
from refusal_probe.activations.capture import prompts_fingerprint
from refusal_probe.activations.sites import logits_hook_name
from refusal_probe.direction.estimators import Candidates, Direction, check_fits, cosine_per_layer
from refusal_probe.interventions.hooks import Ablate, Add, PerRow, Span
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.scoring.refusal import (
    MAX_NEW_TOKENS,
    REFUSAL_PHRASES,
    Judgement,
    RefusalTokens,
    generate,
    is_refusal,
    kl_divergence,
    map_last_logits,
    refusal_score_from_logits,
    refusal_tokens,
)
from refusal_probe.selection.search import candidate_directions, split_texts
from refusal_probe.selection.selection import DirectionConfig
from refusal_probe.stats.intervals import (
    LEVEL,
    N_RESAMPLES,
    SEED,
    Interval,
    Rate,
    bootstrap_mean,
    paired_difference,
    wilson_interval,
)

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
    """

    split: str = "test"
    n_prompts: int | None = None
    max_new_tokens: int = MAX_NEW_TOKENS
    phrases: tuple[str, ...] = REFUSAL_PHRASES
    token_phrases: tuple[str, ...] = REFUSAL_PHRASES
    coefficients: tuple[float, ...] = COEFFICIENTS
    alpha: float = 1.0
    add_span: Span = "prompt"
    batch_size: int | None = None
    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    level: float = LEVEL
    refusal_token_override: tuple[int | str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class DosePoint:
    """Mean refusal probability ``P_R`` at one addition coefficient.

    Attributes:
        alpha: The coefficient (``0``: no intervention).
        harmful: Mean ``P_R`` on harmful prompts, with a bootstrap interval.
        harmless: Mean ``P_R`` on harmless prompts, with a bootstrap interval.
    """

    alpha: float
    harmful: Interval
    harmless: Interval


@dataclass(frozen=True, eq=False)
class ValidationResult:
    """The causal tests of one direction on one model.

    Attributes:
        direction: The direction tested.
        interventions: ``repr`` of what was applied in each condition, for the report.
        harmful_baseline: Refusal rate on harmful prompts, no intervention.
        harmful_ablated: Refusal rate on harmful prompts, direction ablated.
        harmless_baseline: Refusal rate on harmless prompts, no intervention.
        harmless_added: Refusal rate on harmless prompts, direction added.
        ablation_effect: Change in harmful refusal rate from ablation (ablated - baseline, paired
            over prompts; negative when ablation removes refusal).
        addition_effect: Change in harmless refusal rate from addition (added - baseline, paired).
        kl_ablation: Mean KL(base || ablated) of the next token on harmless prompts, nats.
        score_harmful_baseline: Mean refusal log-odds on harmful prompts.
        score_harmful_ablated: The same with the direction ablated.
        dose_response: Mean ``P_R`` per addition coefficient.
        judgements: The completions and verdicts of each condition.
        model_fingerprint: The model validated on.
        forward_passes: Passes run by this call (generation steps included; 0 on a cache hit).
        wall_s: Seconds taken.
        config: The configuration used.
    """

    direction: Direction
    interventions: dict[str, str]
    harmful_baseline: Rate
    harmful_ablated: Rate
    harmless_baseline: Rate
    harmless_added: Rate
    ablation_effect: Interval
    addition_effect: Interval
    kl_ablation: Interval
    score_harmful_baseline: Interval
    score_harmful_ablated: Interval
    dose_response: tuple[DosePoint, ...]
    judgements: dict[str, Judgement]
    model_fingerprint: str
    forward_passes: int
    wall_s: float
    config: ValidationConfig = field(default_factory=ValidationConfig)

    def __repr__(self) -> str:
        return (
            f"ValidationResult(harmful {self.harmful_baseline.value:.2f} -> ablated "
            f"{self.harmful_ablated.value:.2f}; harmless {self.harmless_baseline.value:.2f} "
            f"-> added {self.harmless_added.value:.2f}; KL {self.kl_ablation.value:.3f})"
        )

    def to_dict(self, examples: int = 3) -> dict[str, Any]:
        """Plain JSON-ready data, with the first ``examples`` completions of each condition."""
        return {
            "direction": self.direction.to_dict(),
            "interventions": dict(self.interventions),
            "harmful_baseline": self.harmful_baseline.to_dict(),
            "harmful_ablated": self.harmful_ablated.to_dict(),
            "harmless_baseline": self.harmless_baseline.to_dict(),
            "harmless_added": self.harmless_added.to_dict(),
            "ablation_effect": self.ablation_effect.to_dict(),
            "addition_effect": self.addition_effect.to_dict(),
            "kl_ablation": self.kl_ablation.to_dict(),
            "score_harmful_baseline": self.score_harmful_baseline.to_dict(),
            "score_harmful_ablated": self.score_harmful_ablated.to_dict(),
            "dose_response": [asdict(p) for p in self.dose_response],
            "examples": {k: j.examples(examples) for k, j in self.judgements.items()},
            "model_fingerprint": self.model_fingerprint,
            "forward_passes": self.forward_passes,
            "wall_s": self.wall_s,
            "config": self.config.to_dict(),
        }


def validate_direction(
    model: LoadedModel,
    direction: Direction,
    fixtures: Fixtures,
    config: ValidationConfig | None = None,
    *,
    cache: TensorCache | None = None,
) -> ValidationResult:
    """Run the causal tests of ``direction`` on ``model`` (see the module docstring).

    Args:
        model: The model to test on; a checkpoint of the direction's architecture.
        direction: The direction (for addition, its raw vector is added at its own layer).
        fixtures: Prompt fixtures; ``config.split`` of both classes is used.
        config: Split, generation bound, coefficients, intervals.
        cache: Disk cache for the completions and scores (a re-run then runs no forward pass).

    Raises:
        DirectionError: The direction does not fit the model, or the split is empty.
        ScoringError: No refusal tokens could be derived.
    """
    config = config or ValidationConfig()
    check_fits(model, direction)
    t0 = time.perf_counter()
    harmful, harmless = split_texts(fixtures, config.split, config.n_prompts)
    ablate, add = Ablate(direction), Add(direction, alpha=config.alpha, span=config.add_span)
    key = cache_key(
        model.key,
        "validation",
        direction=direction.sha256,
        layer=direction.layer,
        harmful=prompts_fingerprint(harmful),
        harmless=prompts_fingerprint(harmless),
        max_new_tokens=config.max_new_tokens,
        alpha=config.alpha,
        add_span=config.add_span,
        coefficients=list(config.coefficients),
        tokens=list(_tokens(model, config).ids),
    )
    runs, hit = cached(
        cache, key, lambda: _measure(model, direction, harmful, harmless, config), ValidationRuns
    )
    judged = _judge(list(runs.completions), harmful, harmless, config)
    kw = {"n_resamples": config.n_resamples, "seed": config.seed, "level": config.level}
    nh = len(harmful)
    refused = {k: np.array(j.refused, dtype=float) for k, j in judged.items()}
    by_alpha = runs.by_alpha  # [coefficient, prompt] refusal log-odds
    dose = tuple(
        DosePoint(
            a,
            bootstrap_mean(torch.sigmoid(s[:nh]).numpy(), **kw),
            bootstrap_mean(torch.sigmoid(s[nh:]).numpy(), **kw),
        )
        for a, s in zip(config.coefficients, by_alpha, strict=True)
    )
    return ValidationResult(
        direction=direction,
        interventions={"harmful_ablated": repr(ablate), "harmless_added": repr(add)},
        harmful_baseline=judged["harmful_baseline"].rate,
        harmful_ablated=judged["harmful_ablated"].rate,
        harmless_baseline=judged["harmless_baseline"].rate,
        harmless_added=judged["harmless_added"].rate,
        ablation_effect=paired_difference(
            refused["harmful_ablated"], refused["harmful_baseline"], **kw
        ),
        addition_effect=paired_difference(
            refused["harmless_added"], refused["harmless_baseline"], **kw
        ),
        kl_ablation=bootstrap_mean(runs.kl.numpy(), **kw),
        score_harmful_baseline=bootstrap_mean(runs.base[:nh].numpy(), **kw),
        score_harmful_ablated=bootstrap_mean(runs.ablated[:nh].numpy(), **kw),
        dose_response=dose,
        judgements=judged,
        model_fingerprint=model.identity.fingerprint,
        forward_passes=0 if hit else runs.forward_passes,
        wall_s=time.perf_counter() - t0,
        config=config,
    )


def _tokens(model: LoadedModel, config: ValidationConfig) -> RefusalTokens:
    return refusal_tokens(
        model.tokenizer, config.token_phrases, override=config.refusal_token_override
    )


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
        forward_passes: Passes the generations and scorings took.
    """

    completions: tuple[str, ...]
    by_alpha: Tensor
    base: Tensor
    ablated: Tensor
    kl: Tensor
    forward_passes: int


def _measure(
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
    tokens = _tokens(model, config)
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
    # (intervention, prompt) per remaining row: the ablated harmless prompts, then each nonzero
    # coefficient's additions (at config.alpha the harmless ones were read while generating)
    jobs: list[tuple[Ablate | Add, str]] = [(ablate, p) for p in harmless]
    for a in config.coefficients:
        if a != 0.0:
            todo = harmful if a == config.alpha else harmful + harmless
            jobs += [(Add(direction, alpha=a), p) for p in todo]

    def reduce(idx: Sequence[int], logits: Tensor) -> Tensor:
        kl = torch.full((len(idx),), float("nan"), dtype=torch.float64)
        ab = [j for j, i in enumerate(idx) if i < nl]  # the ablation rows come first
        if ab:
            kl[ab] = kl_divergence(ref[torch.tensor([idx[j] for j in ab])], logits[ab])
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
    row = nl
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
        forward_passes=gen_passes + n_rows,
    )


def _judge(
    texts: list[str], harmful: list[str], harmless: list[str], config: ValidationConfig
) -> dict[str, Judgement]:
    """Split the stored completions into the four conditions and judge them."""
    sets = {
        "harmful_baseline": harmful,
        "harmless_baseline": harmless,
        "harmful_ablated": harmful,
        "harmless_added": harmless,
    }
    out, at = {}, 0
    for name in CONDITIONS:
        ps = sets[name]
        done = texts[at : at + len(ps)]
        at += len(ps)
        refused = tuple(is_refusal(t, config.phrases) for t in done)
        rate = wilson_interval(sum(refused), len(refused), config.level)
        # The conditions share one generation run, counted in ValidationResult.forward_passes.
        out[name] = Judgement(tuple(ps), tuple(done), refused, rate, config.max_new_tokens, 0)
    return out


# ---------------------------------------------------------------------------------------------
# transfer between checkpoints


@dataclass(frozen=True, eq=False)
class TransferResult:
    """A direction from one checkpoint, tested on another of the same architecture.

    Attributes:
        source_fingerprint: The checkpoint the direction was read from.
        target_fingerprint: The checkpoint it was applied to.
        validation: The causal tests of the transferred direction on the target.
        cosine_per_layer: Cosine between the source's and the target's own difference-of-means
            candidates at the direction's position, per layer (empty without source candidates).
        layers: The layers of ``cosine_per_layer``.
    """

    source_fingerprint: str
    target_fingerprint: str
    validation: ValidationResult
    cosine_per_layer: tuple[float, ...]
    layers: tuple[int, ...]

    @property
    def cosine_at_layer(self) -> float | None:
        """The cosine at the direction's own layer (``None`` without source candidates)."""
        layer = self.validation.direction.layer
        return self.cosine_per_layer[self.layers.index(layer)] if layer in self.layers else None

    def to_dict(self, examples: int = 3) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "source_fingerprint": self.source_fingerprint,
            "target_fingerprint": self.target_fingerprint,
            "validation": self.validation.to_dict(examples),
            "cosine_per_layer": list(self.cosine_per_layer),
            "layers": list(self.layers),
            "cosine_at_layer": self.cosine_at_layer,
        }


def transfer(
    direction: Direction,
    target: LoadedModel,
    fixtures: Fixtures,
    *,
    source_candidates: Candidates | None = None,
    validation: ValidationConfig | None = None,
    config: DirectionConfig | None = None,
    cache: TensorCache | None = None,
) -> TransferResult:
    """Apply a direction read from one checkpoint to another, and compare their directions.

    Args:
        direction: The source checkpoint's direction.
        target: A checkpoint of the same architecture (for example a fine-tune of the source).
        fixtures: Prompt fixtures.
        source_candidates: The source's candidate grid; with it, the target's own candidates are
            fit (on ``config.fit_split``, unfiltered) and compared layer by layer.
        validation: Configuration of the causal tests on the target.
        config: Configuration of the target's candidate fit.
        cache: Disk cache for the target's captures and validation.

    Raises:
        DirectionError: The direction does not fit the target.
    """
    check_fits(target, direction)
    result = validate_direction(target, direction, fixtures, validation, cache=cache)
    cos: list[float] = []
    layers: tuple[int, ...] = ()
    if source_candidates is not None:
        config = config or DirectionConfig()
        mine = candidate_directions(
            target, fixtures, split=config.fit_split, n=config.n_fit, config=config, cache=cache
        )
        cos, layers = cosine_per_layer(source_candidates, mine, direction.position), mine.layers
    return TransferResult(
        direction.model_fingerprint, target.identity.fingerprint, result, tuple(cos), layers
    )
