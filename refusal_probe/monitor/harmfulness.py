"""The monitor's harmfulness readout: its direction, and where to read it (held-out choice).

Axes: ``prompt`` prompts in input order, ``site`` candidate layers, ``d`` d_model.

The harmfulness direction separates harmful from harmless prompts in one layer's ``resid_post``.
A candidate readout is a choice of

* *layer*;
* *pool* (:data:`POOLS`): the activations the direction is fit on, the last instruction token's
  or their mean over the user's text;
* *shrinkage* (``1`` to ``0``): ``1`` is the difference of the class means; below 1 the
  difference is whitened by the pooled within-class covariance shrunk toward a multiple of the
  identity, ``C = (1 - a) * S + a * (tr S / d) * I`` (a Fisher discriminant, regularized): it
  discounts directions along which prompts of one class vary a lot anyway (template, length);
* *span* (:data:`refusal_probe.monitor.signals.SPANS`): where the direction is read, at the last
  instruction token, as the largest projection over the user's text, or as their mean.

Every candidate is scored without the test split:

* ``auroc_cv``: two-fold held-out AUROC inside the fit split (fit on the even prompts of each
  class, read the odd ones with the candidate's span, and the reverse);
* ``auroc_shift``: the direction fit on the whole fit split, AUROC on the *shift* split (the
  monitor's calibration split: other prompts, possibly other templates or topics);
* ``auroc_attack``: the same direction, AUROC of jailbreak prompts built on the shift split's
  harmful prompts (the red-team's adversarial suffixes on the ``val`` prompts,
  ``jailbreaks-val.jsonl``) against its harmless prompts: does the readout still see a request as
  harmful once an attacker has appended text to it (NaN without such attacks);
* ``tpr_attack``: the share of those jailbreaks above the threshold the monitor will use, set
  for ``target_fpr`` on the shift split's harmless prompts: detection *at the operating point*.
  At a 2% target on 64 prompts that threshold is the largest harmless score, and a readout whose
  attacks clear the harmless bulk (high AUROC) may still not clear its extreme;
* ``fpr_unseen``: the false-positive rate on harmless prompts of *unseen kinds*. The fit
  split's harmless prompts are held out one group at a time (their ``category``, when the
  fixtures give two or more; else the two interleaved halves); for each group the direction is
  refit without it, the threshold is set for ``target_fpr`` on the shift split's harmless
  prompts (as calibration will), and the held-out group's prompts above it are counted (pooled
  over the groups). It asks what deployment asks: does a threshold set on one sample of
  harmless requests hold on requests about things neither the fit nor the calibration saw?
  (A readout read as a maximum over tokens is heavy-tailed there: one unfamiliar word can lift a
  harmless request above every calibration prompt.)
* ``fpr_shift`` (reported, not used in the choice): the shift split's harmless prompts above a
  threshold set on held-out fit-split prompts. On ``organism-chat`` it ranked readouts against
  their test false-positive rate (Spearman -0.42 over the 120 candidates; ``fpr_unseen`` +0.66):
  held-out fit-split prompts share their acts with the fit, so it measures the fit/calibration
  gap, which calibration removes anyway.

A candidate is *stable* unless ``fpr_unseen`` is credibly above ``tolerance * target_fpr``: the
low end of its 95% Wilson interval is above it (a handful of held-out prompts cannot resolve a
rate of a few percent, and one flagged prompt of eight is no evidence). The choice is the stable
candidate with the best worst case ``min(auroc_cv, auroc_shift, auroc_attack, tpr_attack)``
(ties: the earlier layer, then the earlier span, pool and shrinkage in the order given); with no
stable candidate, the one with the lowest ``fpr_unseen``. The shift split's harmless prompts
later calibrate the thresholds too, so they influence the choice only through aggregate rates.
The candidates' scores and this choice are :mod:`refusal_probe.monitor.harmfulness_choice`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.capture import prompts_fingerprint
from refusal_probe.direction.estimators import Direction
from refusal_probe.errors import MonitorError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.harmfulness_choice import (
    DEFAULT_SHRINKAGES,
    Candidate,
    HarmfulnessSearch,
    choose,
)
from refusal_probe.monitor.pooled import CAPTURED_SPANS, POOLS, pooled_activations
from refusal_probe.monitor.signals import SPANS, Readout, read_raw
from refusal_probe.stats.intervals import wilson_interval
from refusal_probe.stats.separation import auroc, conformal_threshold

#: Spans searched by default: what the user's text shows (the post-instruction tokens are the
#: template's, downstream of anything an attacker appends). The maximum over the user's tokens
#: (``"instruction"``) is not searched by default: a maximum of a linear readout is a keyword
#: detector, and a harmless request with words no calibration prompt had can exceed any
#: threshold set on the calibration prompts (on organism-chat it flagged 11/96 and then 17/96
#: held-out harmless prompts while scoring perfectly on train and val; see
#: benchmarks/monitor_results.md). Pass ``spans`` to search it. The maximum over the last token
#: of each sentence (``"request_max"``) is searched: few positions, each a whole request's
#: reading, and appended text cannot lower it (dilution, suffixes).
DEFAULT_SPANS: tuple[str, ...] = ("last_instruction", "instruction_mean", "request_max")


def search_harmfulness(
    model: LoadedModel,
    fit: tuple[Sequence[str], Sequence[str]],
    shift: tuple[Sequence[str], Sequence[str]],
    *,
    attacks: Sequence[str] = (),
    groups: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    spans: Sequence[str] = DEFAULT_SPANS,
    pools: Sequence[str] = POOLS,
    shrinkages: Sequence[float] = DEFAULT_SHRINKAGES,
    target_fpr: float = 0.05,
    tolerance: float = 1.5,
    batch_size: int | None = None,
) -> tuple[Direction, HarmfulnessSearch]:
    """The harmfulness direction and where to read it (see the module docstring).

    Args:
        model: The monitored model.
        fit: ``(harmful, harmless)`` prompts the direction is fit on (two or more of each).
        shift: ``(harmful, harmless)`` prompts of another split; at least one harmless prompt.
        attacks: Jailbreaks built on the shift split's harmful prompts (for ``auroc_attack`` and
            ``tpr_attack``); never the test split's.
        groups: One label per harmless fit prompt (its category), held out in turn for
            ``fpr_unseen``; ``None`` or fewer than two labels: the two interleaved halves.
        layers: Candidate layers (``None``: every layer).
        spans: Candidate spans.
        pools: Candidate pools (:data:`POOLS`).
        shrinkages: Candidate shrinkages, each in ``(0, 1]``.
        target_fpr: The false-positive rate the monitor's thresholds aim for.
        tolerance: Stable unless ``fpr_unseen`` is credibly (95% Wilson interval) above
            ``tolerance * target_fpr``.
        batch_size: Prompts per forward pass (``None``: chosen from free memory).

    Returns:
        The direction, refit on all ``fit`` prompts for the chosen candidate, and the search.

    Raises:
        MonitorError: An unknown span or pool, a shrinkage outside ``(0, 1]``, too few prompts,
            ``groups`` of the wrong length, or no layer where the class means differ.
    """
    spans, pools, shrinkages = tuple(spans), tuple(pools), tuple(float(a) for a in shrinkages)
    _check_grid(spans, pools, shrinkages)
    harmful, harmless = list(fit[0]), list(fit[1])
    if min(len(harmful), len(harmless)) < 2 or not shift[1]:
        raise MonitorError(
            "the harmfulness search needs at least 2 harmful and 2 harmless fit prompts and one "
            "harmless prompt of the shift split"
        )
    how, labels = _groups(groups, len(harmless))
    layers = tuple(range(model.n_layers)) if layers is None else tuple(layers)
    acts_h = pooled_activations(model, harmful, layers, batch_size=batch_size)
    acts_l = pooled_activations(model, harmless, layers, batch_size=batch_size)
    # Rows of the harmless fit prompts each fold's direction is fit on; "out:g" leaves group g out.
    rows_l: dict[str, Any] = {"0": slice(0, None, 2), "1": slice(1, None, 2), "all": slice(None)}
    rows_l |= {f"out:{g}": torch.tensor(labels != g) for g in np.unique(labels)}
    rows_h = {f: rows_l[f] if f in ("0", "1") else slice(None) for f in rows_l}
    # vectors[(fold, pool, shrinkage)]: [site, d]
    vectors = {
        (f, pool, a): v
        for f in rows_l
        for pool in pools
        for a, v in _fits(
            acts_h.pools[pool][rows_h[f]], acts_l.pools[pool][rows_l[f]], shrinkages
        ).items()
    }
    live = [j for j in range(len(layers)) if all(float(v[j].norm()) > 0 for v in vectors.values())]
    if not live:
        raise MonitorError(
            "harmful and harmless prompts have the same mean activation at every searched "
            "layer; there is no harmfulness direction to read"
        )
    grid = [(j, pool, a, s) for j in live for pool in pools for a in shrinkages for s in spans]
    fp = (prompts_fingerprint(harmful), prompts_fingerprint(harmless))

    def direction(f: str, j: int, pool: str, a: float) -> Direction:
        return _direction(
            model, vectors[(f, pool, a)][j], layers[j], pool, a, fp, len(harmful), len(harmless)
        )

    def readouts(fs: Sequence[str]) -> list[Readout]:
        return [
            Readout(f"{f}|{j}|{pool}|{a}|{s}", direction(f, j, pool, a), s)
            for f in fs
            for j, pool, a, s in grid
        ]

    out_folds = [f for f in rows_l if f.startswith("out:")]
    sh, sl, atk = list(shift[0]), list(shift[1]), list(attacks)
    # A span read off a capture (a projection of a pool, or the largest projection over the
    # request ends) needs one pass over the shift prompts and none over the fit prompts again;
    # other spans take passes of their own.
    captured = [s for s in spans if s in CAPTURED_SPANS]
    acts_s = (
        pooled_activations(model, sh + sl + atk, layers, batch_size=batch_size)
        if captured
        else None
    )
    shift_l = slice(len(sh), len(sh) + len(sl))

    def read(
        fs: Sequence[str], prompts: list[str], parts: Sequence[tuple[Any, slice]]
    ) -> dict[str, Tensor]:
        """Raw readouts of ``prompts`` by the folds ``fs``.

        ``parts``: the captures of the prompts and their rows there, in order (read part by part).
        """
        raw: dict[str, Tensor] = {}
        for f, pool, a, s in itertools.product(fs, pools, shrinkages, captured):
            v = vectors[(f, pool, a)]
            values = torch.cat([acts.read(s, v, rows) for acts, rows in parts])  # [prompt, site]
            raw |= {f"{f}|{j}|{pool}|{a}|{s}": values[:, j] for j in live}
        other = [r for r in readouts(fs) if r.span not in CAPTURED_SPANS]
        if other:
            raw |= read_raw(model, other, prompts, batch_size=batch_size)
        return raw

    every = slice(None)
    on_fit = read(("0", "1"), harmful + harmless, [(acts_h, every), (acts_l, every)])
    on_shift = read(("0", "1", "all"), sh + sl + atk, [(acts_s, every)])
    # Each left-out direction reads its own group and the shift split's harmless prompts.
    on_out = read(out_folds, harmless + sl, [(acts_l, every), (acts_s, shift_l)])
    n_h, n_l, n_sh, n_sl = len(harmful), len(harmless), len(sh), len(sl)
    candidates = []
    for j, pool, a, s in grid:
        key = f"{j}|{pool}|{a}|{s}"
        pos, neg, fprs = [], [], []
        for f, held in (("0", 1), ("1", 0)):  # fold f's direction reads the other fold
            fit_raw = on_fit[f"{f}|{key}"].numpy()
            pos.append(fit_raw[:n_h][held::2])
            neg.append(fit_raw[n_h:][held::2])
            threshold, _ = conformal_threshold(neg[-1], target_fpr)
            harmless_shift = on_shift[f"{f}|{key}"].numpy()[n_sh : n_sh + n_sl]
            fprs.append(float((harmless_shift > threshold).mean()))
        flagged = 0
        for f in out_folds:
            raw = on_out[f"{f}|{key}"].numpy()
            threshold, _ = conformal_threshold(raw[n_l:], target_fpr)
            flagged += int((raw[:n_l][~rows_l[f].numpy()] > threshold).sum())
        unseen = flagged / n_l
        full = on_shift[f"all|{key}"].numpy()
        neg_shift = full[n_sh : n_sh + n_sl]
        shifted = auroc(full[:n_sh], neg_shift) if n_sh else math.nan
        attacked, caught = math.nan, math.nan
        if atk:
            attacked = auroc(full[n_sh + n_sl :], neg_shift)
            threshold, _ = conformal_threshold(neg_shift, target_fpr)
            caught = float((full[n_sh + n_sl :] > threshold).mean())
        candidates.append(
            Candidate(
                layers[j],
                s,
                auroc(np.concatenate(pos), np.concatenate(neg)),
                shifted,
                unseen,
                wilson_interval(flagged, n_l).low <= tolerance * target_fpr,
                pool,
                a,
                attacked,
                caught,
                float(np.mean(fprs)),
            )
        )
    chosen, rule = choose(candidates, spans, tolerance, target_fpr, pools, shrinkages)
    best = direction("all", layers.index(chosen.layer), chosen.pool, chosen.shrinkage)
    search = HarmfulnessSearch(
        tuple(candidates), chosen, target_fpr, tolerance, rule, len(atk), how, len(out_folds)
    )
    return best, search


def _groups(groups: Sequence[str] | None, n: int) -> tuple[str, np.ndarray]:
    """How harmless fit prompts are held out for ``fpr_unseen``, and each prompt's group."""
    if groups is not None and len(groups) != n:
        raise MonitorError(
            f"groups has {len(groups)} labels for {n} harmless fit prompts; pass one label "
            "(the prompt's category) per harmless fit prompt, or None"
        )
    if groups is not None and len(set(groups)) >= 2:
        return "category", np.asarray([str(g) for g in groups])
    return "halves", np.asarray([str(i % 2) for i in range(n)])


def _fits(
    h: Float[Tensor, "prompt site d"],
    l_: Float[Tensor, "prompt site d"],
    shrinkages: Sequence[float],
) -> dict[float, Float[Tensor, "site d"]]:
    """Difference of the class means per site for each shrinkage, whitened unless it is 1.

    The pooled covariance is computed once for all of them.
    """
    diff = h.mean(0) - l_.mean(0)  # [site, d]
    out = {a: diff for a in shrinkages if a >= 1.0}
    whitened = [a for a in shrinkages if a < 1.0]
    if not whitened:
        return out
    centred = torch.cat([h - h.mean(0), l_ - l_.mean(0)])  # [prompt, site, d]
    dof = max(centred.shape[0] - 2, 1)
    cov = torch.einsum("psi,psj->sij", centred, centred) / dof  # [site, d, d]
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]  # tr S / d per site
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant site: no whitening
    for a in whitened:
        out[a] = _whiten(diff, (1 - a) * cov + a * scale * eye)  # symmetric positive definite
    return out


def _whiten(diff: Float[Tensor, "site d"], shrunk: Float[Tensor, "site d d"]) -> Tensor:
    """``shrunk⁻¹ diff`` per site, rescaled to the length of ``diff``."""
    # Cholesky, not LU: batched LU solves of this size fail inside MKL on some CPUs (seen with
    # SmolLM2's 30 sites x 576 in float64 and two threads: "Pivots given to lu_solve ...").
    chol, info = torch.linalg.cholesky_ex(shrunk)
    w = torch.cholesky_solve(diff[..., None], chol)[..., 0]  # [site, d]
    for i in torch.nonzero(info).flatten().tolist():  # not positive definite in floating point
        w[i] = torch.linalg.lstsq(shrunk[i], diff[i, :, None]).solution[:, 0]
    # Same length as the plain difference, so a vector's norm still reads as a mean gap.
    norm = w.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return w / norm * diff.norm(dim=-1, keepdim=True)


def _direction(
    model: LoadedModel,
    vector: Tensor,
    layer: int,
    pool: str,
    shrinkage: float,
    fingerprints: tuple[str, str],
    n_harmful: int,
    n_harmless: int,
) -> Direction:
    method = "diff_means" if shrinkage >= 1.0 else f"whitened_diff_means(shrinkage={shrinkage:g})"
    return Direction(
        vector,
        layer,
        -(model.chat.n_post + 1),  # the last instruction token sits just before the template
        method if pool == "last_instruction" else f"{method} over the instruction mean",
        n_harmful,
        n_harmless,
        fingerprints[0],
        fingerprints[1],
        model.identity.fingerprint,
        model.identity.architecture,
        "resid_post",
    )


def _check_grid(
    spans: tuple[str, ...], pools: tuple[str, ...], shrinkages: tuple[float, ...]
) -> None:
    if not spans or any(s not in SPANS for s in spans):
        raise MonitorError(f"harmfulness spans must be a non-empty subset of {SPANS}; got {spans}")
    if not pools or any(p not in POOLS for p in pools):
        raise MonitorError(f"harmfulness pools must be a non-empty subset of {POOLS}; got {pools}")
    if not shrinkages or any(not 0.0 < a <= 1.0 for a in shrinkages):
        raise MonitorError(
            f"harmfulness shrinkages must be in (0, 1] (1: plain difference of means); got "
            f"{shrinkages}"
        )
