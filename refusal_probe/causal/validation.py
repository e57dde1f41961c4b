"""Causal validation of a refusal direction, on one checkpoint or transferred to another.

Axes: ``prompt`` prompts, ``alpha`` addition coefficients.

A direction that *mediates* refusal must pass three tests on held-out prompts (Arditi et al. 2024):
ablating it makes the model comply with harmful requests; adding it makes the model refuse harmless
ones; and ablating it costs little elsewhere (small KL on the harmless prompts the model answers:
on those it over-refuses, a large KL is the ablation doing its job). Refusal is judged on
greedy completions by the configured judge (``config.judge``: the reply judge by default), with
Wilson intervals; a dose-response curve of the refusal probability ``P_R`` (logit proxy) against
the addition coefficient shows the effect is graded, not a cliff.

Baseline and intervened runs share forward passes (:mod:`refusal_probe.causal.runs`); this
module judges what they measured and turns it into rates, paired effects and intervals.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from refusal_probe.activations.cache import TensorCache, cache_key, cached
from refusal_probe.activations.capture import prompts_fingerprint
from refusal_probe.causal.runs import (
    CONDITIONS,
    ValidationConfig,
    ValidationRuns,
    run_conditions,
    validation_tokens,
)
from refusal_probe.direction.estimators import Candidates, Direction, check_fits
from refusal_probe.direction.separation import cosine_per_layer
from refusal_probe.interventions.hooks import Ablate, Add
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.scoring.generation import Judgement
from refusal_probe.scoring.reply import refused as judged_refusal
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.search import candidate_directions, split_texts
from refusal_probe.stats.intervals import (
    Interval,
    bootstrap_mean,
    paired_rate_difference,
    wilson_interval,
)


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
        kl_ablation: Mean KL(base || ablated) of the next token on all harmless prompts, nats.
        kl_answered: The same on the harmless prompts the model answers: refusal log-odds < 0 at
            the last prompt position, selection's filter (the KL check's figure).
        kl_over_refused: The same on the harmless prompts it over-refuses (log-odds >= 0).
        kl_random: Reference cost: the KL of ablating a random direction of the same width and
            norm (:func:`~refusal_probe.causal.runs.random_directions`, averaged over them), on
            the answered harmless prompts.
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
    harmful_baseline: Interval
    harmful_ablated: Interval
    harmless_baseline: Interval
    harmless_added: Interval
    ablation_effect: Interval
    addition_effect: Interval
    kl_ablation: Interval
    kl_answered: Interval
    kl_over_refused: Interval
    kl_random: Interval
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
            "kl_answered": self.kl_answered.to_dict(),
            "kl_over_refused": self.kl_over_refused.to_dict(),
            "kl_random": self.kl_random.to_dict(),
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
        tokens=list(validation_tokens(model, config).ids),
        n_random=config.n_random,
    )
    runs, hit = cached(
        cache,
        key,
        lambda: run_conditions(model, direction, harmful, harmless, config),
        ValidationRuns,
    )
    judged = _judge(list(runs.completions), harmful, harmless, config)
    boot = config.bootstrap
    nh = len(harmful)
    refused = {k: np.array(j.refused, dtype=float) for k, j in judged.items()}
    by_alpha = runs.by_alpha  # [coefficient, prompt] refusal log-odds
    answered = (runs.base[nh:] < 0).numpy()  # selection's filter on harmless prompts

    def kl_mean(kl: np.ndarray) -> Interval:
        return bootstrap_mean(kl, boot, of="prompts") if len(kl) else Interval.nothing(boot.level)

    dose = tuple(
        DosePoint(
            a,
            bootstrap_mean(torch.sigmoid(s[:nh]).numpy(), boot, of="prompts"),
            bootstrap_mean(torch.sigmoid(s[nh:]).numpy(), boot, of="prompts"),
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
        ablation_effect=paired_rate_difference(
            refused["harmful_ablated"], refused["harmful_baseline"], boot.level
        ),
        addition_effect=paired_rate_difference(
            refused["harmless_added"], refused["harmless_baseline"], boot.level
        ),
        kl_ablation=bootstrap_mean(runs.kl.numpy(), boot, of="prompts"),
        kl_answered=kl_mean(runs.kl.numpy()[answered]),
        kl_over_refused=kl_mean(runs.kl.numpy()[~answered]),
        kl_random=kl_mean(runs.kl_random.mean(0).numpy()[answered]),
        score_harmful_baseline=bootstrap_mean(runs.base[:nh].numpy(), boot, of="prompts"),
        score_harmful_ablated=bootstrap_mean(runs.ablated[:nh].numpy(), boot, of="prompts"),
        dose_response=dose,
        judgements=judged,
        model_fingerprint=model.identity.fingerprint,
        forward_passes=0 if hit else runs.forward_passes,
        wall_s=time.perf_counter() - t0,
        config=config,
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
        refused = tuple(judged_refusal(t, config.judge, config.phrases) for t in done)
        rate = wilson_interval(sum(refused), len(refused), config.level)
        # The conditions share one generation run, counted in ValidationResult.forward_passes.
        out[name] = Judgement(
            tuple(ps),
            tuple(done),
            refused,
            rate,
            config.max_new_tokens,
            0,
            config.judge,
            tuple(config.phrases),
        )
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
