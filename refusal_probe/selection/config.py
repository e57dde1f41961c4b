"""How the refusal direction is found: the one plain-data record of every split, grid and threshold.

Its own module so that the grid's passes (:mod:`refusal_probe.selection.grid`) and the choice
(:mod:`refusal_probe.selection.selection`) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from refusal_probe.scoring.refusal import REFUSAL_PHRASES
from refusal_probe.stats.intervals import N_RESAMPLES, SEED, Bootstrap


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
            free memory, :func:`refusal_probe.model.devices.auto_batch_size`).
        max_rows: Most rows per forward pass when candidates are stacked along the batch (fewer
            when free memory is short).
        positions: Post-instruction positions (negative offsets) to consider; ``None``: all.
        layers: Layers to consider; ``None``: all (a sparser grid for large models).
        n_eval: Prompts per class of the held-out separation split (``None``: all).
        score_late_layers: Score candidates at layers past the cutoff too (the whole grid, as
            the reference does); ``False`` records them as discarded without spending passes.
        screen: Score exactly only this many candidates, the lowest first-order bypass
            estimates below the layer cutoff (:mod:`refusal_probe.selection.screening`);
            ``None``: score every candidate (the reference procedure).
        race: Score the candidates on growing prompt subsets and drop the dominated ones early
            (:mod:`refusal_probe.selection.racing`); ``False``: every candidate on every prompt.
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
    race: bool = False
    alternative: bool = True
    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    token_phrases: tuple[str, ...] = REFUSAL_PHRASES
    refusal_token_override: tuple[int | str, ...] | None = None

    @property
    def bootstrap(self) -> Bootstrap:
        """The separation intervals' bootstrap (95% level)."""
        return Bootstrap(self.n_resamples, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)
