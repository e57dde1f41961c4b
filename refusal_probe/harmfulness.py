"""The monitor's harmfulness readout: its direction, and where to read it (held-out choice).

Axes: ``prompt`` prompts in input order, ``site`` candidate layers, ``d`` d_model.

The harmfulness direction is a difference of means of harmful and harmless prompts at the last
instruction token of one layer's ``resid_post``. Where it is read is a choice of *layer* and
*span* (:data:`refusal_probe.signals.SPANS`: the last instruction token, or the largest projection
over the user's text, ...). Every candidate is scored without the test split or any attack (the
red-team prompts exist only for the test split):

* ``auroc_cv``: two-fold held-out AUROC inside the fit split (fit on the even prompts of each
  class, read the odd ones with the candidate's span, and the reverse);
* ``auroc_shift``: the direction fit on the whole fit split, AUROC on the *shift* split (the
  monitor's calibration split: other prompts, possibly other templates or topics);
* ``fpr_shift``: the false-positive rate on the shift split's harmless prompts at the threshold
  that gives ``target_fpr`` on the held-out fold's harmless prompts (mean of the two folds). It
  asks whether a threshold set on one sample of harmless prompts holds on another: a readout
  whose harmless scores move between samples will not hold its calibrated rate in deployment.

A candidate is *stable* when ``fpr_shift <= tolerance * target_fpr``. The choice is the stable
candidate with the best worst-case separation ``min(auroc_cv, auroc_shift)`` (ties: the earlier
layer, then the earlier span in the order given); with no stable candidate, the one with the
lowest ``fpr_shift``. The shift split's harmless prompts later calibrate the thresholds too, so
they influence the choice only through one aggregate rate per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from jaxtyping import Float
from torch import Tensor

from refusal_probe.capture import capture
from refusal_probe.directions import Direction
from refusal_probe.errors import MonitorError
from refusal_probe.models import LoadedModel
from refusal_probe.signals import SPANS, Readout, read_raw
from refusal_probe.sites import LAST_INSTRUCTION, Site
from refusal_probe.stats import auroc, conformal_threshold

#: Spans searched by default: what the user's text shows (the post-instruction tokens are the
#: template's, downstream of anything an attacker appends).
DEFAULT_SPANS: tuple[str, ...] = ("last_instruction", "instruction")


@dataclass(frozen=True)
class Candidate:
    """One place to read the harmfulness direction, and its held-out scores.

    Attributes:
        layer: Block whose ``resid_post`` is read.
        span: One of :data:`refusal_probe.signals.SPANS`.
        auroc_cv: Two-fold held-out AUROC inside the fit split.
        auroc_shift: AUROC on the shift split (NaN when it lacks a class).
        fpr_shift: False-positive rate on the shift split's harmless prompts at thresholds set
            for the target rate on held-out fit-split harmless prompts (mean of two folds).
        stable: ``fpr_shift`` is within the tolerance.
    """

    layer: int
    span: str
    auroc_cv: float
    auroc_shift: float
    fpr_shift: float
    stable: bool

    @property
    def separation(self) -> float:
        """Worst held-out AUROC (``auroc_cv`` alone when the shift split lacks a class)."""
        if math.isnan(self.auroc_shift):
            return self.auroc_cv
        return min(self.auroc_cv, self.auroc_shift)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (NaN as ``None``)."""
        d = asdict(self)
        d["separation"] = self.separation
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


@dataclass(frozen=True)
class HarmfulnessSearch:
    """Every candidate readout, and the one chosen.

    Attributes:
        candidates: Layers x spans, in search order.
        chosen: The chosen candidate.
        target_fpr: The false-positive rate thresholds aim for.
        tolerance: A candidate is stable when ``fpr_shift <= tolerance * target_fpr``.
        rule: Why it was chosen, in words.
    """

    candidates: tuple[Candidate, ...]
    chosen: Candidate
    target_fpr: float
    tolerance: float
    rule: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "chosen": self.chosen.to_dict(),
            "rule": self.rule,
            "target_fpr": self.target_fpr,
            "tolerance": self.tolerance,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def search_harmfulness(
    model: LoadedModel,
    fit: tuple[Sequence[str], Sequence[str]],
    shift: tuple[Sequence[str], Sequence[str]],
    *,
    layers: Sequence[int] | None = None,
    spans: Sequence[str] = DEFAULT_SPANS,
    target_fpr: float = 0.05,
    tolerance: float = 2.0,
    capture_kw: dict[str, Any] | None = None,
) -> tuple[Direction, HarmfulnessSearch]:
    """The harmfulness direction and where to read it (see the module docstring).

    Args:
        model: The monitored model.
        fit: ``(harmful, harmless)`` prompts the direction is fit on (two or more of each).
        shift: ``(harmful, harmless)`` prompts of another split; at least one harmless prompt.
        layers: Candidate layers (``None``: every layer).
        spans: Candidate spans.
        target_fpr: The false-positive rate the monitor's thresholds aim for.
        tolerance: Stable when ``fpr_shift <= tolerance * target_fpr``.
        capture_kw: Keyword arguments of :func:`refusal_probe.capture.capture` (batch size,
            cache); its ``batch_size`` also sizes the readout passes.

    Returns:
        The direction, refit on all ``fit`` prompts at the chosen layer, and the search.

    Raises:
        MonitorError: An unknown span, too few prompts, or no layer where the class means differ.
    """
    spans = tuple(spans)
    bad = [s for s in spans if s not in SPANS]
    if not spans or bad:
        raise MonitorError(f"harmfulness spans must be a non-empty subset of {SPANS}; got {spans}")
    harmful, harmless = list(fit[0]), list(fit[1])
    if min(len(harmful), len(harmless)) < 2 or not shift[1]:
        raise MonitorError(
            "the harmfulness search needs at least 2 harmful and 2 harmless fit prompts and one "
            "harmless prompt of the shift split"
        )
    kw = dict(capture_kw or {})
    layers = tuple(range(model.n_layers)) if layers is None else tuple(layers)
    sites = [Site(layer, "resid_post") for layer in layers]
    acts_h = capture(model, harmful, sites, LAST_INSTRUCTION, **kw)
    acts_l = capture(model, harmless, sites, LAST_INSTRUCTION, **kw)
    h, l_ = acts_h.values[:, :, 0].double(), acts_l.values[:, :, 0].double()  # [prompt, site, d]

    def diff(rows: slice) -> Float[Tensor, "site d"]:
        return h[rows].mean(0) - l_[rows].mean(0)

    # One direction per layer: fit on fold 0 (even prompts), fold 1 (odd), and on all.
    vectors = {"0": diff(slice(0, None, 2)), "1": diff(slice(1, None, 2)), "all": diff(slice(None))}
    live = [j for j in range(len(layers)) if all(float(v[j].norm()) > 0 for v in vectors.values())]
    if not live:
        raise MonitorError(
            "harmful and harmless prompts have the same mean activation at every searched "
            "layer; there is no harmfulness direction to read"
        )

    def direction(v: Tensor, j: int) -> Direction:
        return Direction(
            v[j],
            layers[j],
            -(model.chat.n_post + 1),  # the last instruction token sits just before the template
            "diff_means",
            len(harmful),
            len(harmless),
            acts_h.prompts_sha256,
            acts_l.prompts_sha256,
            model.identity.fingerprint,
            model.identity.architecture,
            "resid_post",
        )

    def readouts(folds: Sequence[str]) -> list[Readout]:
        return [
            Readout(f"{f}|{j}|{s}", direction(vectors[f], j), s)
            for f in folds
            for j in live
            for s in spans
        ]

    bs = kw.get("batch_size")
    on_fit = read_raw(model, readouts(("0", "1")), harmful + harmless, batch_size=bs)
    sh, sl = list(shift[0]), list(shift[1])
    on_shift = read_raw(model, readouts(("0", "1", "all")), sh + sl, batch_size=bs)
    n_h, n_sh = len(harmful), len(sh)
    candidates = []
    for j in live:
        for s in spans:
            pos, neg, fprs = [], [], []
            for f, held in (("0", 1), ("1", 0)):  # fold f's direction reads the other fold
                fit_raw = on_fit[f"{f}|{j}|{s}"].numpy()
                pos.append(fit_raw[:n_h][held::2])
                neg.append(fit_raw[n_h:][held::2])
                threshold, _ = conformal_threshold(neg[-1], target_fpr)
                fprs.append(float((on_shift[f"{f}|{j}|{s}"].numpy()[n_sh:] > threshold).mean()))
            full = on_shift[f"all|{j}|{s}"].numpy()
            shifted = auroc(full[:n_sh], full[n_sh:]) if n_sh else math.nan
            fpr = float(np.mean(fprs))
            candidates.append(
                Candidate(
                    layers[j],
                    s,
                    auroc(np.concatenate(pos), np.concatenate(neg)),
                    shifted,
                    fpr,
                    fpr <= tolerance * target_fpr,
                )
            )
    chosen, rule = _choose(candidates, spans, tolerance, target_fpr)
    best = direction(vectors["all"], layers.index(chosen.layer))
    return best, HarmfulnessSearch(tuple(candidates), chosen, target_fpr, tolerance, rule)


def _choose(
    candidates: Sequence[Candidate], spans: Sequence[str], tolerance: float, target_fpr: float
) -> tuple[Candidate, str]:
    """The stable candidate that separates best, else the most stable one (see the docstring)."""
    order = {s: i for i, s in enumerate(spans)}
    stable = [c for c in candidates if c.stable]
    if stable:
        best = max(stable, key=lambda c: (c.separation, -c.layer, -order[c.span]))
        return best, (
            f"best worst-case held-out AUROC min(auroc_cv, auroc_shift) among the {len(stable)} "
            f"of {len(candidates)} candidates whose fpr_shift <= {tolerance:g} x {target_fpr:g}"
        )
    best = min(candidates, key=lambda c: (c.fpr_shift, -c.separation, c.layer, order[c.span]))
    return best, (
        f"no candidate kept fpr_shift <= {tolerance:g} x {target_fpr:g}; the one with the lowest "
        "fpr_shift"
    )
