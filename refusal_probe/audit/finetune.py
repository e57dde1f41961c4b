"""The fine-tune comparison: a candidate checkpoint against its baseline.

Three figures, each from the engine's own functions: the cosine between the baseline's refusal
direction and the candidate's difference of means at the same site
(:func:`~refusal_probe.direction.estimators.difference_of_means`, per layer by
:func:`~refusal_probe.direction.estimators.cosine_per_layer`; bootstrap over the candidate's
prompts at the direction's layer); *transfer*, the share of the harmful prompts the candidate
refuses that it stops refusing when the baseline's direction is ablated
(:func:`~refusal_probe.causal.validation.transfer`, Wilson); and the drop in harmful refusal from
baseline to candidate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from refusal_probe.activations.cache import TensorCache
from refusal_probe.activations.capture import capture
from refusal_probe.activations.sites import POST_INSTRUCTION, all_layers
from refusal_probe.audit.behaviour import Behaviour
from refusal_probe.audit.policy import Settings
from refusal_probe.audit.store import DirectionArtifact
from refusal_probe.audit.values import interval_of, rate_dict, rate_of
from refusal_probe.causal.validation import ValidationConfig, transfer
from refusal_probe.direction.estimators import (
    Candidates,
    check_fits,
    cosine_per_layer,
    difference_of_means,
)
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.report.record import Figure
from refusal_probe.selection.search import split_texts
from refusal_probe.stats.intervals import Interval, Rate, wilson_interval


@dataclass(frozen=True)
class FineTune:
    """The candidate against its baseline.

    Attributes:
        layer: The baseline direction's layer.
        position: The baseline direction's position.
        cosine: Cosine of the baseline's direction with the candidate's difference of means there.
        layers: Layers of ``cosine_per_layer``.
        cosine_per_layer: Cosine of the baseline's candidates with the candidate's, per layer
            (``None`` where either is a zero vector).
        transfer: Share of the candidate's harmful refusals that ablating the baseline's
            direction removes.
        candidate_ablated: The candidate's harmful refusal rate, the baseline's direction ablated.
        refusal_drop: Baseline harmful refusal rate minus the candidate's.
        baseline_rates: The baseline's ``harmful`` and ``harmless`` refusal rates.
        candidate_rates: The candidate's.
    """

    layer: int
    position: int
    cosine: Interval
    layers: list[int]
    cosine_per_layer: list[float | None]
    transfer: Rate
    candidate_ablated: Rate
    refusal_drop: Interval
    baseline_rates: dict[str, dict[str, Any]]
    candidate_rates: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        d = asdict(self)
        d["cosine"], d["refusal_drop"] = self.cosine.to_dict(), self.refusal_drop.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FineTune:
        """Inverse of :meth:`to_dict`."""
        return cls(
            **{
                **d,
                "cosine": interval_of(d["cosine"]),
                "refusal_drop": interval_of(d["refusal_drop"]),
                "transfer": rate_of(d["transfer"]),
                "candidate_ablated": rate_of(d["candidate_ablated"]),
            }
        )

    def deltas(self) -> list[dict[str, Any]]:
        """Candidate minus baseline, for the report's baseline table."""
        out = []
        for cls_, title in (
            ("harmful", "harmful refusal rate"),
            ("harmless", "harmless refusal rate"),
        ):
            c, b = self.candidate_rates[cls_]["value"], self.baseline_rates[cls_]["value"]
            out.append(
                {
                    "id": f"behaviour.{cls_}_rate",
                    "title": title,
                    "candidate": c,
                    "baseline": b,
                    "delta": c - b if c is not None and b is not None else None,
                }
            )
        return out

    def cosine_figure(self, threshold: float | None = None) -> Figure:
        """Per-layer cosine of the baseline's and the candidate's directions."""
        return Figure(
            "line",
            f"Baseline vs candidate direction, per layer (position {self.position})",
            {
                "x": self.layers,
                "series": [{"name": "cosine", "y": self.cosine_per_layer}],
                "x_label": "layer (resid_pre)",
                "y_label": "cosine",
                "y_range": [-1, 1],
                "threshold": threshold,
                "mark_x": self.layer,
            },
            "Cosine between the two checkpoints' difference-of-means vectors at each layer; a "
            "fine-tune that "
            "kept the refusal mechanism stays near 1; dotted line: the baseline's selected layer",
        )

    def rates_figure(self) -> Figure:
        """Refusal rates: baseline, candidate, candidate with the baseline's direction ablated."""
        b, c = self.baseline_rates, self.candidate_rates
        return Figure(
            "bars",
            "Refusal rates: baseline, candidate, and candidate with the baseline's direction "
            "ablated",
            {
                "labels": ["harmful", "harmless"],
                "y_label": "refusal rate",
                "y_range": [0, 1],
                "series": [
                    _series("baseline", [rate_of(b["harmful"]), rate_of(b["harmless"])]),
                    _series("candidate", [rate_of(c["harmful"]), rate_of(c["harmless"])]),
                    _series(
                        "candidate, baseline direction ablated", [self.candidate_ablated, None]
                    ),
                ],
            },
            "Whiskers: 95% Wilson intervals",
        )


def _series(name: str, rates: list[Rate | None]) -> dict[str, Any]:
    return {
        "name": name,
        "values": [r.value if r else None for r in rates],
        "lo": [r.low if r else None for r in rates],
        "hi": [r.high if r else None for r in rates],
    }


def measure_finetune(
    model: LoadedModel,
    fixtures: Fixtures,
    base: DirectionArtifact,
    base_rates: tuple[Rate, Rate],
    candidate: Behaviour,
    *,
    settings: Settings,
    validation: ValidationConfig,
    cache: TensorCache,
) -> FineTune:
    """Compare the candidate ``model`` with its baseline (see the module docstring).

    Args:
        model: The candidate.
        fixtures: The run's prompt sets (the train split fits the candidate's difference of means).
        base: The baseline's selected direction and its per-layer candidates.
        base_rates: The baseline's harmful and harmless refusal rates.
        candidate: The candidate's behaviour.
        settings: The run's settings (intervals, batch size).
        validation: How the baseline's direction is validated on the candidate.
        cache: Disk cache of activations and completions.
    """
    s, seed = settings, validation.seed
    direction = base.direction
    check_fits(model, direction)
    harmful, harmless = split_texts(fixtures, "train")
    sites = all_layers(model.n_layers)
    kw: dict[str, Any] = {"batch_size": s.batch_size, "cache": cache, "progress": False}
    acts_h = capture(model, harmful, sites, POST_INSTRUCTION, **kw)
    acts_l = capture(model, harmless, sites, POST_INSTRUCTION, **kw)
    all_means = difference_of_means(acts_h, acts_l)  # [layer, pos, d]
    j = all_means.offsets.index(direction.position)
    mine = all_means.restrict([direction.position], base.layers)
    theirs = Candidates(
        base.per_layer.double()[:, None],  # [layer, 1, d]
        base.layers,
        (direction.position,),
        direction.method,
        direction.n_harmful,
        direction.n_harmless,
        direction.harmful_sha256,
        direction.harmless_sha256,
        direction.model_fingerprint,
    )
    cosines = cosine_per_layer(theirs, mine, direction.position)
    zero = (theirs.vectors[:, 0].norm(dim=-1) == 0) | (mine.vectors[:, 0].norm(dim=-1) == 0)
    cos = _bootstrap_cosine(
        direction.vector,
        acts_h.values[:, direction.layer, j].double(),  # [prompt, d]: sites are every layer
        acts_l.values[:, direction.layer, j].double(),
        s.resamples,
        seed,
        s.confidence,
    )
    t = transfer(direction, model, fixtures, validation=validation, cache=cache).validation
    before = t.judgements["harmful_baseline"].refused
    after = t.judgements["harmful_ablated"].refused
    k = sum(1 for b, a in zip(before, after, strict=True) if b and not a)
    base_h, base_l = base_rates
    return FineTune(
        layer=direction.layer,
        position=direction.position,
        cosine=cos,
        layers=list(base.layers),
        cosine_per_layer=[None if z else c for c, z in zip(cosines, zero.tolist(), strict=True)],
        transfer=wilson_interval(k, sum(before), s.confidence),
        candidate_ablated=t.harmful_ablated,
        refusal_drop=rate_difference(
            base_h, candidate.harmful, n_resamples=s.resamples, seed=seed, level=s.confidence
        ),
        baseline_rates={"harmful": rate_dict(base_h), "harmless": rate_dict(base_l)},
        candidate_rates={
            "harmful": rate_dict(candidate.harmful),
            "harmless": rate_dict(candidate.harmless),
        },
    )


def rate_difference(a: Rate, b: Rate, *, n_resamples: int, seed: int, level: float) -> Interval:
    """``a - b`` of two independently judged rates, with a two-sample bootstrap interval."""
    if a.n == 0 or b.n == 0:
        return Interval(math.nan, math.nan, math.nan, level, "two-sample bootstrap", 0)
    rng = np.random.default_rng(seed)
    da = rng.binomial(a.n, a.k / a.n, size=n_resamples) / a.n
    db = rng.binomial(b.n, b.k / b.n, size=n_resamples) / b.n
    alpha = (1 - level) / 2
    lo, hi = np.quantile(da - db, [alpha, 1 - alpha])
    v = a.k / a.n - b.k / b.n
    return Interval(
        v, float(min(lo, v)), float(max(hi, v)), level, "two-sample bootstrap", n_resamples
    )


def _bootstrap_cosine(
    reference: Tensor,
    harmful: Tensor,
    harmless: Tensor,
    n_resamples: int,
    seed: int,
    level: float,
) -> Interval:
    """Cosine of ``reference`` with mean(harmful) − mean(harmless), resampling prompts."""
    ref = reference.double() / reference.double().norm()
    rng = np.random.default_rng(seed)

    def weights(n: int) -> Tensor:
        return torch.from_numpy(
            rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples) / n
        )  # [B, n]

    diffs = weights(harmful.shape[0]) @ harmful - weights(harmless.shape[0]) @ harmless  # [B, d]
    cos_b = (diffs @ ref) / diffs.norm(dim=1).clamp_min(1e-30)
    mean_diff = harmful.mean(0) - harmless.mean(0)
    na, nb = float(reference.norm()), float(mean_diff.norm())
    v = math.nan if na == 0 or nb == 0 else float(reference.double() @ mean_diff) / (na * nb)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(cos_b.numpy(), [alpha, 1 - alpha])
    return Interval(
        v,
        float(min(lo, v)),
        float(max(hi, v)),
        level,
        "bootstrap-percentile over prompts",
        n_resamples,
    )
