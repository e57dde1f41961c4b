"""The fine-tune comparison: a candidate checkpoint against its baseline.

The baseline is either a model (``--baseline organism-chat``), whose results are computed like the
candidate's (and cached the same way), or the ``audit.json`` of an earlier run, whose folder holds
the direction it selected (``direction.safetensors``) and whose checks hold its refusal rates.

Three figures: the cosine between the baseline's refusal direction and the candidate's own
difference of means at the same site (bootstrap over the candidate's prompts); *transfer*, the
share of the harmful prompts the candidate refuses that it stops refusing when the baseline's
direction is ablated (Wilson); and the drop in harmful refusal from baseline to candidate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from refusal_probe.errors import DirectionError, ModelLoadError, ReportError
from refusal_probe.pytest_plugin.findings import Findings, baseline_findings
from refusal_probe.pytest_plugin.inputs import spec_config
from refusal_probe.pytest_plugin.measures import interval_of, rate_dict, rate_difference, rate_of
from refusal_probe.pytest_plugin.store import load_direction
from refusal_probe.report.record import AuditRecord, Figure
from refusal_probe.stats.intervals import Bootstrap, Interval, wilson_interval


def _is_audit(spec: str) -> bool:
    return spec.endswith(".json") or (Path(spec) / "audit.json").is_file()


def _shape(cfg: dict[str, Any]) -> tuple[str, int, int]:
    arch = (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]
    d = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    n = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
    return str(arch), d, n


def check_baseline_compatible(
    model_spec: str, model_cfg: dict[str, Any] | None, baseline: str, *, what: str = "--model"
) -> None:
    """Refuse a baseline of another architecture or size before anything is loaded.

    ``what`` names where the model was given (``--model``, or a models file's ``FILE:LINE:``).

    Raises:
        ReportError: The baseline audit.json is missing or corrupted.
        ModelLoadError: The baseline names nothing, or has another architecture, width or depth.
    """
    if _is_audit(baseline):
        from refusal_probe.report.schema import read_record

        m = read_record(baseline).model
        base = (str(m.get("architecture")), int(m.get("d_model", 0)), int(m.get("n_layers", 0)))
    else:
        cfg = spec_config(baseline, "--baseline")
        if cfg is None:
            return
        base = _shape(cfg)
    if model_cfg is None:
        return
    mine = _shape(model_cfg)
    if base != mine:
        raise ModelLoadError(
            f"--baseline {baseline} is a {base[0]} with d_model {base[1]} and {base[2]} layers, "
            f"but {what} "
            f"{model_spec} is a {mine[0]} with d_model {mine[1]} and {mine[2]} layers; the "
            "fine-tune audit "
            "compares checkpoints of one architecture (a parent and its fine-tune)"
        )


class ModelBaseline:
    """A baseline model, audited with the same settings as the candidate."""

    def __init__(self, findings: Findings) -> None:
        """Wrap the baseline's own :class:`Findings`."""
        self.findings = findings

    def key(self) -> dict[str, Any]:
        """What the candidate's comparison results depend on."""
        f = self.findings
        return {
            "kind": "model",
            "fingerprint": f.identity.fingerprint,
            "direction": f.direction().direction["vector_sha256"],
        }

    def describe(self) -> dict[str, Any]:
        """The report's ``baseline`` section."""
        return {
            "kind": "model",
            "spec": self.findings.options.model,
            "identity": self.findings.identity.to_dict(),
            "run_id": None,
        }

    def direction(self) -> tuple[Any, torch.Tensor, tuple[int, ...]]:
        """The baseline's selected direction and its per-layer candidates at that position."""
        return self.findings.direction_vector()

    def rates(self) -> tuple[Interval, Interval]:
        """The baseline's harmful and harmless refusal rates."""
        b = self.findings.behaviour()
        return b.harmful, b.harmless


class AuditBaseline:
    """An earlier run's audit.json (and the direction file beside it)."""

    def __init__(self, path: Path, record: AuditRecord) -> None:
        """Wrap a validated record read from ``path``."""
        self.path = path if path.suffix == ".json" else path / "audit.json"
        self.record = record

    def key(self) -> dict[str, Any]:
        """What the candidate's comparison results depend on."""
        art = self.path.parent / "direction.safetensors"
        return {
            "kind": "audit",
            "run_id": self.record.run["id"],
            "model": self.record.model.get("fingerprint"),
            "direction_file": art.stat().st_size if art.is_file() else None,
        }

    def describe(self) -> dict[str, Any]:
        """The report's ``baseline`` section."""
        return {
            "kind": "audit",
            "spec": str(self.path),
            "identity": self.record.model,
            "run_id": self.record.run["id"],
        }

    def direction(self) -> tuple[Any, torch.Tensor, tuple[int, ...]]:
        """The direction the earlier run selected (its ``direction.safetensors``)."""
        art = self.path.parent / "direction.safetensors"
        if not art.is_file():
            raise ReportError(
                f"{art} is missing: the baseline run did not select a direction (its causal or "
                "representation audit did not run); pass a model as --baseline instead"
            )
        return load_direction(art)

    def rates(self) -> tuple[Interval, Interval]:
        """The harmful and harmless refusal rates the earlier run measured."""
        out = []
        for cid in ("behaviour.harmful_refusal", "behaviour.harmless_over_refusal"):
            c = self.record.check(cid)
            if c is None or c.value is None or not c.n:
                raise ReportError(
                    f"baseline audit {self.path} has no {cid} check; re-run its behaviour audit"
                )
            k = int(round(c.value * c.n))
            out.append(wilson_interval(k, c.n, c.level))
        return out[0], out[1]


def open_baseline(findings: Findings) -> ModelBaseline | AuditBaseline:
    """Open ``--baseline``: read an audit.json, or load a model and check it fits the candidate.

    A run opens it once (:class:`~refusal_probe.pytest_plugin.inputs.RunInputs`), however
    many checkpoints it compares with it.
    """
    spec = str(findings.options.baseline)
    if _is_audit(spec):
        from refusal_probe.report.schema import read_record

        return AuditBaseline(Path(spec), read_record(spec))
    base = ModelBaseline(baseline_findings(findings))
    check_fits_candidate(findings, base)
    return base


def check_fits_candidate(findings: Findings, base: ModelBaseline | AuditBaseline) -> None:
    """Refuse a baseline model of another architecture or size than the loaded candidate.

    Raises:
        DirectionError: The shapes differ (after telling the run, which stops a single-model run).
    """
    if not isinstance(base, ModelBaseline):
        return
    mi, bi = findings.model.identity, base.findings.identity
    if (mi.architecture, mi.d_model, mi.n_layers) != (bi.architecture, bi.d_model, bi.n_layers):
        msg = (
            f"--baseline {bi.spec} ({bi.architecture}, d_model {bi.d_model}, {bi.n_layers} "
            f"layers) does not match --model {mi.spec} ({mi.architecture}, d_model "
            f"{mi.d_model}, {mi.n_layers} layers); the fine-tune audit compares checkpoints of "
            "one architecture"
        )
        findings._fatal(msg)
        raise DirectionError(msg)


@dataclass(frozen=True)
class FineTune:
    """The candidate against its baseline.

    Attributes:
        layer: The baseline direction's layer.
        position: The baseline direction's position.
        cosine: Cosine of the baseline's direction with the candidate's difference of means there.
        layers: Layers of ``cosine_per_layer``.
        cosine_per_layer: Cosine of the baseline's candidates with the candidate's, per layer.
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
    transfer: Interval
    candidate_ablated: Interval
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

        def r(d: dict[str, Any]) -> Interval:
            return rate_of(d)

        return Figure(
            "bars",
            "Refusal rates: baseline, candidate, and candidate with the baseline's direction "
            "ablated",
            {
                "labels": ["harmful", "harmless"],
                "y_label": "refusal rate",
                "y_range": [0, 1],
                "series": [
                    _series(
                        "baseline",
                        [r(self.baseline_rates["harmful"]), r(self.baseline_rates["harmless"])],
                    ),
                    _series(
                        "candidate",
                        [r(self.candidate_rates["harmful"]), r(self.candidate_rates["harmless"])],
                    ),
                    _series(
                        "candidate, baseline direction ablated", [self.candidate_ablated, None]
                    ),
                ],
            },
            "Whiskers: 95% Wilson intervals",
        )


def _series(name: str, rates: list[Interval | None]) -> dict[str, Any]:
    return {
        "name": name,
        "values": [r.value if r else None for r in rates],
        "lo": [r.low if r else None for r in rates],
        "hi": [r.high if r else None for r in rates],
    }


def measure_finetune(f: Findings, base: ModelBaseline | AuditBaseline) -> FineTune:
    """Compute the comparison (see the module docstring)."""
    from refusal_probe.activations.cache import TensorCache
    from refusal_probe.activations.capture import capture
    from refusal_probe.activations.sites import POST_INSTRUCTION, all_layers
    from refusal_probe.causal.validation import transfer
    from refusal_probe.direction.estimators import check_fits
    from refusal_probe.selection.search import split_texts

    s, boot = f.settings, f.bootstrap
    direction, base_layers_vecs, base_layers = base.direction()
    check_fits(f.model, direction)
    harmful, harmless = split_texts(f.fixtures, "train")
    kw: dict[str, Any] = {
        "batch_size": s.batch_size,
        "cache": TensorCache(f.options.cache_dir),
        "progress": False,
    }
    sites = all_layers(f.model.n_layers)
    acts_h = capture(f.model, harmful, sites, POST_INSTRUCTION, **kw)
    acts_l = capture(f.model, harmless, sites, POST_INSTRUCTION, **kw)
    j = range(-f.model.chat.n_post, 0).index(direction.position)
    h, l_ = acts_h.values[:, :, j].double(), acts_l.values[:, :, j].double()  # [prompt, layer, d]
    mine = h.mean(0) - l_.mean(0)  # [layer, d]
    per_layer = [
        _cos(base_layers_vecs[i], mine[base_layers[i]]) if base_layers[i] < mine.shape[0] else None
        for i in range(len(base_layers))
    ]
    cos = _bootstrap_cosine(direction.vector, h[:, direction.layer], l_[:, direction.layer], boot)
    t = transfer(
        direction, f.model, f.fixtures, validation=f.validation_config(), cache=kw["cache"]
    ).validation
    before, after = (
        t.judgements["harmful_baseline"].refused,
        t.judgements["harmful_ablated"].refused,
    )
    n = sum(before)
    k = sum(1 for b, a in zip(before, after, strict=True) if b and not a)
    cand = f.behaviour()
    base_h, base_l = base.rates()
    return FineTune(
        layer=direction.layer,
        position=direction.position,
        cosine=cos,
        layers=list(base_layers),
        cosine_per_layer=per_layer,
        transfer=wilson_interval(k, n, s.confidence),
        candidate_ablated=t.harmful_ablated,
        refusal_drop=rate_difference(base_h, cand.harmful, boot),
        baseline_rates={"harmful": rate_dict(base_h), "harmless": rate_dict(base_l)},
        candidate_rates={"harmful": rate_dict(cand.harmful), "harmless": rate_dict(cand.harmless)},
    )


def _cos(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = float(a.norm()), float(b.norm())
    return None if na == 0 or nb == 0 else float(a.double() @ b.double()) / (na * nb)


def _bootstrap_cosine(
    reference: torch.Tensor,
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    boot: Bootstrap,
) -> Interval:
    """Cosine of ``reference`` with mean(harmful) − mean(harmless), resampling prompts."""
    ref = reference.double() / reference.double().norm()
    nh, nl = harmful.shape[0], harmless.shape[0]
    ch, cl = (torch.from_numpy(c) for c in boot.stratified_counts(nh, nl))  # [B, n_h], [B, n_l]
    diffs = ch @ harmful / nh - cl @ harmless / nl  # [B, d]
    cos_b = (diffs @ ref) / diffs.norm(dim=1).clamp_min(1e-30)
    value = _cos(reference, harmful.mean(0) - harmless.mean(0))
    v = math.nan if value is None else value
    return boot.interval(v, cos_b.numpy(), boot.method("stratified", "prompts"))
