"""The fine-tune comparison: a candidate checkpoint against its baseline.

Three figures, each from the engine's own functions: the cosine between the baseline's refusal
direction and the candidate's difference of means at the same site
(:func:`~refusal_probe.direction.estimators.difference_of_means`, per layer by
:func:`~refusal_probe.direction.estimators.cosine_per_layer`; bootstrap over the candidate's
prompts at the direction's layer); *transfer*, the share of the harmful prompts the candidate
refuses that it stops refusing when the baseline's direction is ablated
(:func:`~refusal_probe.causal.validation.transfer`, Wilson), all in :class:`FineTune`; and the drop
in harmful refusal from baseline to candidate (:class:`RefusalChange`), which needs no forward pass
of its own (the two checkpoints' behaviour), so a run that asks only for it does not pay for the
others.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from refusal_probe.activations.cache import TensorCache
from refusal_probe.activations.capture import capture
from refusal_probe.activations.sites import POST_INSTRUCTION, all_layers
from refusal_probe.audit.behaviour import Behaviour
from refusal_probe.audit.direction import DirectionSummary
from refusal_probe.audit.settings import Settings
from refusal_probe.audit.store import DirectionArtifact
from refusal_probe.causal.validation import ValidationConfig, transfer
from refusal_probe.direction.estimators import Candidates, check_fits, difference_of_means
from refusal_probe.direction.separation import cosine_per_layer
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.report.record import Figure
from refusal_probe.selection.search import split_texts
from refusal_probe.stats.intervals import Bootstrap, Interval, rate_difference, wilson_interval


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
    """

    layer: int
    position: int
    cosine: Interval
    layers: list[int]
    cosine_per_layer: list[float | None]
    transfer: Interval
    candidate_ablated: Interval

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        d = asdict(self)
        for k in ("cosine", "transfer", "candidate_ablated"):
            d[k] = getattr(self, k).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FineTune:
        """Inverse of :meth:`to_dict`.

        A record stored before the refusal drop moved out to :class:`RefusalChange` still reads:
        its refusal fields are left out.
        """
        known = {f.name for f in fields(cls)}
        return cls(
            **{
                **{k: v for k, v in d.items() if k in known},
                "cosine": Interval.from_dict(d["cosine"]),
                "transfer": Interval.from_dict(d["transfer"]),
                "candidate_ablated": Interval.from_dict(d["candidate_ablated"]),
            }
        )

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


@dataclass(frozen=True)
class RefusalChange:
    """The candidate's refusal rates against the baseline's.

    Attributes:
        refusal_drop: Baseline harmful refusal rate minus the candidate's.
        baseline_rates: The baseline's ``harmful`` and ``harmless`` refusal rates.
        candidate_rates: The candidate's.
    """

    refusal_drop: Interval
    baseline_rates: dict[str, dict[str, Any]]
    candidate_rates: dict[str, dict[str, Any]]

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

    def rates_figure(self, ablated: Interval | None = None) -> Figure:
        """Refusal rates of the baseline and the candidate.

        Args:
            ablated: The candidate's harmful refusal with the baseline's direction ablated, where
                the fine-tune comparison ran (``None``: that bar is left out).
        """
        b, c = self.baseline_rates, self.candidate_rates
        series = [
            _series("baseline", [_rate(b["harmful"]), _rate(b["harmless"])]),
            _series("candidate", [_rate(c["harmful"]), _rate(c["harmless"])]),
        ]
        title = "Refusal rates: baseline, candidate"
        if ablated is not None:
            series.append(_series("candidate, baseline direction ablated", [ablated, None]))
            title += ", candidate with the baseline's direction ablated"
        return Figure(
            "bars",
            title,
            {
                "labels": ["harmful", "harmless"],
                "y_label": "refusal rate",
                "y_range": [0, 1],
                "series": series,
            },
            "Whiskers: 95% Wilson intervals",
        )


def refusal_change(
    base_rates: tuple[Interval, Interval], candidate: Behaviour, boot: Bootstrap
) -> RefusalChange:
    """The baseline's harmful and harmless refusal rates against the ``candidate``'s."""
    base_h, base_l = base_rates
    return RefusalChange(
        refusal_drop=rate_difference(base_h, candidate.harmful, boot),
        baseline_rates={"harmful": base_h.to_dict(), "harmless": base_l.to_dict()},
        candidate_rates={
            "harmful": candidate.harmful.to_dict(),
            "harmless": candidate.harmless.to_dict(),
        },
    )


def change_figure(baseline: DirectionSummary, candidate: DirectionSummary, ft: FineTune) -> Figure:
    """What training changed, per layer: each checkpoint's separation and the directions' cosine.

    The comparison the seed asks of a base model and its safety-trained child (``--baseline`` the
    base): where the harmful/harmless separation was already there before training, where the
    direction moved, and where each checkpoint's selection found its causal direction.
    """

    def curve(summary: DirectionSummary, layers: list[int]) -> list[float | None]:
        by_layer = {r["layer"]: r["auroc"] for r in summary.curve}
        return [by_layer.get(layer) for layer in layers]

    layers = sorted({r["layer"] for r in baseline.curve} | {r["layer"] for r in candidate.curve})
    cosine = dict(zip(ft.layers, ft.cosine_per_layer, strict=True))
    return Figure(
        "line",
        "What changed per layer: separation of each checkpoint, cosine of their directions",
        {
            "x": layers,
            "series": [
                {"name": "baseline separation (AUROC)", "y": curve(baseline, layers)},
                {"name": "candidate separation (AUROC)", "y": curve(candidate, layers)},
                {"name": "direction cosine", "y": [cosine.get(layer) for layer in layers]},
            ],
            "x_label": "layer (resid_pre)",
            "y_label": "AUROC / cosine",
            "y_range": [-1, 1],
            "mark_x": ft.layer,
        },
        f"Separation: held-out AUROC per layer at each checkpoint's selected position (baseline "
        f"layer {baseline.direction['layer']}, chosen by {baseline.chosen_by}; candidate layer "
        f"{candidate.direction['layer']}, chosen by {candidate.chosen_by}). Cosine: as in the "
        "figure above. A base model that separates but does not refuse shows separation without a "
        "causal direction; safety training then adds the causal use of it",
    )


def _rate(d: dict[str, Any]) -> Interval:
    return Interval.from_dict(d)


def _series(name: str, rates: list[Interval | None]) -> dict[str, Any]:
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
        settings: The run's settings (confidence level, batch size).
        validation: How the baseline's direction is validated on the candidate.
        cache: Disk cache of activations and completions.
    """
    s, boot = settings, validation.bootstrap
    direction = base.direction
    check_fits(model, direction)
    harmful, harmless = split_texts(fixtures, "train")
    sites = all_layers(model.n_layers)
    kw: dict[str, Any] = {"batch_size": s.batch_size, "cache": cache}
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
    cos = _cosine_interval(
        direction.vector,
        acts_h.values[:, direction.layer, j].double(),  # [prompt, d]: sites are every layer
        acts_l.values[:, direction.layer, j].double(),
        boot,
    )
    t = transfer(direction, model, fixtures, validation=validation, cache=cache).validation
    before = t.judgements["harmful_baseline"].refused
    after = t.judgements["harmful_ablated"].refused
    k = sum(1 for b, a in zip(before, after, strict=True) if b and not a)
    return FineTune(
        layer=direction.layer,
        position=direction.position,
        cosine=cos,
        layers=list(base.layers),
        cosine_per_layer=[None if z else c for c, z in zip(cosines, zero.tolist(), strict=True)],
        transfer=wilson_interval(k, sum(before), s.confidence),
        candidate_ablated=t.harmful_ablated,
    )


def _cosine_interval(
    reference: Tensor, harmful: Tensor, harmless: Tensor, boot: Bootstrap
) -> Interval:
    """Cosine of ``reference`` with mean(harmful) − mean(harmless), each class resampled.

    Args:
        reference: The baseline's direction, ``[d]``.
        harmful: The candidate's activations on harmful prompts there, ``[prompt, d]``.
        harmless: The same on harmless prompts.
        boot: The run's bootstrap (a stratified resample of prompts).
    """
    ref = reference.double() / reference.double().norm()
    nh, nl = harmful.shape[0], harmless.shape[0]
    ch, cl = (torch.from_numpy(c) for c in boot.stratified_counts(nh, nl))  # [B, n_h], [B, n_l]
    diffs = ch @ harmful / nh - cl @ harmless / nl  # [B, d]
    cos_b = (diffs @ ref) / diffs.norm(dim=1).clamp_min(1e-30)  # [B]
    mean_diff = harmful.mean(0) - harmless.mean(0)  # [d]
    na, nb = float(reference.norm()), float(mean_diff.norm())
    v = math.nan if na == 0 or nb == 0 else float(reference.double() @ mean_diff) / (na * nb)
    return boot.interval(v, cos_b.numpy(), boot.method("stratified", "prompts"), n=nh + nl)
