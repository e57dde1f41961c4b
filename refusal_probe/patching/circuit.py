"""Circuit summary: where refusal is computed, and how much, how stably, how durably.

Where: which components; how much: the share of the refusal gap the top components carry; how
stably: under resampled pairs; how durably: from one checkpoint to another.

Axes: ``pair`` matched pairs, ``comp`` candidate components, ``B`` bootstrap resamples.

:func:`localize` is the one-call entry point:

1. attribution patching ranks every candidate (each head, and each MLP, over the post-instruction
   span) in three passes;
2. the top candidates by attribution are confirmed by exact patching (all of them with
   ``exact_all=True``), and the circuit is the top-k by exact effect;
3. the circuit is patched in jointly (the fraction of the refusal gap it restores, also for its
   top-1, top-2, ... prefixes), and everything else at the span is mean-ablated (the fraction of
   the gap the circuit alone keeps);
4. resampling the pairs gives the ranking's stability, and the attribution ranking's agreement
   with the exact one is reported.

:func:`refusal_probe.patching.compare.compare_circuits` sets two results side by side.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from refusal_probe.activations.sites import Positions
from refusal_probe.errors import PatchingError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.patching.ablation import fraction_kept
from refusal_probe.patching.components import Component
from refusal_probe.patching.mode import PatchMode
from refusal_probe.patching.pairs import (
    Metric,
    PairBatch,
    PairLike,
    default_metric,
    encode_pairs,
    metric_name,
    offsets_for,
)
from refusal_probe.patching.results import (
    Agreement,
    PatchResult,
    agreement,
    bounds,
    effects,
    pair_counts,
    pair_interval,
    pair_method,
    spearman,
    top_k,
)
from refusal_probe.patching.sweeps import attribution_patching, patch_variants
from refusal_probe.stats.intervals import Bootstrap, Interval

_KIND_GRID = {"head": "head", "mlp": "mlp"}


@dataclass(frozen=True)
class RankStability:
    """How stable the top-k is when the pairs are resampled (bootstrap over pairs).

    Attributes:
        jaccard: Jaccard index of each resample's top-k with the full sample's, mean and interval.
        spearman: Spearman correlation of each resample's effects with the full sample's.
        inclusion: For each circuit component (in circuit order), the share of resamples that
            keep it in their top-k.
        n_resamples: Number of resamples.
    """

    jaccard: Interval
    spearman: Interval
    inclusion: tuple[float, ...]
    n_resamples: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "jaccard": self.jaccard.to_dict(),
            "spearman": self.spearman.to_dict(),
            "inclusion": list(self.inclusion),
            "n_resamples": self.n_resamples,
        }


@dataclass(frozen=True, eq=False)
class CircuitResult:
    """The localized refusal circuit of one model on one set of pairs.

    Attributes:
        components: The top-k components by exact effect, largest first.
        effects: Exact normalized effect of each (patched alone), with its interval.
        attribution_effects: Attribution estimate of each.
        fraction_restored: Effect of patching all k together (denoising: share of the gap restored).
        restored_curve: The same for the top-1, top-2, ..., top-k prefixes.
        fraction_kept: Share of the clean-vs-corrupted gap left when every other candidate is
            mean-ablated at the span (the circuit alone), with its interval.
        stability: Stability of the ranking under resampled pairs.
        agreement: Attribution vs exact effects over the components patched exactly.
        agreement_scope: ``"all"`` (every candidate patched exactly) or ``"confirmed"`` (only the
            top candidates by attribution: a restricted range, so correlations read low).
        confirmed: Components patched exactly, with their exact effects.
        attribution: Attribution results per grid (``head``: layer x head; ``mlp``: layer).
        gap: Mean clean-minus-corrupted metric, with its interval.
        k: Circuit size.
        offsets: The span of positions the components cover (negative offsets).
        mode: ``PatchMode.DENOISE`` or ``PatchMode.NOISE``.
        metric: Name of the metric.
        model_fingerprint: The model's identity fingerprint.
        pair_ids: The pairs used.
        forwards: Forward passes run in total.
        seconds: Wall time.
    """

    components: tuple[Component, ...]
    effects: tuple[Interval, ...]
    attribution_effects: tuple[float, ...]
    fraction_restored: Interval
    restored_curve: tuple[float, ...]
    fraction_kept: Interval
    stability: RankStability
    agreement: Agreement
    agreement_scope: str
    confirmed: dict[Component, float]
    attribution: dict[str, PatchResult]
    gap: Interval
    k: int
    offsets: tuple[int, ...]
    mode: PatchMode
    metric: str
    model_fingerprint: str
    pair_ids: tuple[str, ...]
    forwards: int
    seconds: float

    def __repr__(self) -> str:
        return (
            f"CircuitResult(top-{self.k}: {', '.join(str(c) for c in self.components[:5])}"
            f"{'...' if self.k > 5 else ''}; restored {self.fraction_restored}, "
            f"kept {self.fraction_kept})"
        )

    def layers(self) -> dict[int, int]:
        """How many circuit components sit in each layer."""
        return dict(sorted(Counter(c.layer for c in self.components).items()))

    def summary(self) -> str:
        """A few readable lines for logs and reports."""
        lines = [f"refusal circuit ({self.mode}, {len(self.pair_ids)} pairs, gap {self.gap}):"]
        for c, e, a in zip(self.components, self.effects, self.attribution_effects, strict=True):
            lines.append(f"  {str(c):<16} exact {e}   attribution {a:+.3f}")
        lines.append(
            f"  top-{self.k} together restore {self.fraction_restored}; alone (rest mean-ablated) "
            f"they keep {self.fraction_kept}"
        )
        lines.append(
            f"  stability: top-{self.k} Jaccard {self.stability.jaccard}, "
            f"Spearman {self.stability.spearman}"
        )
        lines.append(f"  attribution vs exact ({self.agreement_scope}): {self.agreement}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (heatmaps included)."""
        return {
            "k": self.k,
            "components": [str(c) for c in self.components],
            "layers": {str(k): v for k, v in self.layers().items()},
            "effects": [e.to_dict() for e in self.effects],
            "attribution_effects": list(self.attribution_effects),
            "fraction_restored": self.fraction_restored.to_dict(),
            "restored_curve": list(self.restored_curve),
            "fraction_kept": self.fraction_kept.to_dict(),
            "stability": self.stability.to_dict(),
            "agreement": self.agreement.to_dict(),
            "agreement_scope": self.agreement_scope,
            "confirmed": {str(c): _num(v) for c, v in self.confirmed.items()},
            "heatmaps": {g: r.to_dict() for g, r in self.attribution.items()},
            "gap": self.gap.to_dict(),
            "offsets": list(self.offsets),
            "mode": self.mode.value,
            "metric": self.metric,
            "model_fingerprint": self.model_fingerprint,
            "n_pairs": len(self.pair_ids),
            "forwards": self.forwards,
            "seconds": self.seconds,
        }


def localize(
    model: LoadedModel,
    pairs: Sequence[PairLike] | PairBatch,
    metric: Metric | None = None,
    *,
    k: int = 10,
    kinds: Sequence[str] = ("head", "mlp"),
    positions: Positions | None = None,
    mode: PatchMode | str = PatchMode.DENOISE,
    n_confirm: int | None = None,
    exact_all: bool = False,
    pair_batch: int = 32,
    max_rows: int = 256,
    boot: Bootstrap = Bootstrap(),
) -> CircuitResult:
    """Localize the refusal circuit: attribution filter, exact confirmation, circuit summary.

    Args:
        model: The model.
        pairs: Matched (harmful, harmless) pairs of equal token length.
        metric: Last-position logits -> ``[batch]``; default the refusal log-odds.
        k: Circuit size.
        kinds: Candidate kinds: ``head`` (each head over the span) and/or ``mlp`` (each MLP).
        positions: The span (default the post-instruction positions).
        mode: ``PatchMode.DENOISE`` or ``PatchMode.NOISE``.
        n_confirm: Candidates confirmed exactly (default ``3 k``, at least 20).
        exact_all: Patch every candidate exactly (the attribution agreement is then over all).
        pair_batch: Pairs per chunk.
        max_rows: Most rows (variants x pairs) per forward pass.
        boot: Resamples (of pairs), seed and level of the intervals and the stability.

    Raises:
        PatchingError: Unmatched pairs, unknown kinds, ``k`` < 1, or no refusal gap to explain.
    """
    t0 = time.perf_counter()
    mode = PatchMode.of(mode)
    bad = [x for x in kinds if x not in _KIND_GRID]
    if bad or not kinds:
        raise PatchingError(f"unknown candidate kinds {bad or kinds}; use 'head' and/or 'mlp'")
    if k < 1:
        raise PatchingError(f"k must be >= 1, got {k}")
    metric = metric or default_metric(model)
    batch = pairs if isinstance(pairs, PairBatch) else encode_pairs(model, pairs)
    offsets = offsets_for(batch, positions, "head")
    attr = attribution_patching(
        model,
        batch,
        [_KIND_GRID[x] for x in kinds],
        metric=metric,
        positions=Positions("explicit", offsets),
        mode=mode,
        pair_batch=pair_batch,
        boot=boot,
    )
    cand = effect_map(attr.values())
    any_attr = next(iter(attr.values()))
    gap = any_attr.clean - any_attr.corrupted
    if abs(float(gap.mean())) < 1e-9:
        raise PatchingError(
            "the clean and corrupted runs give the same metric on these pairs: there is no "
            "refusal gap to localize (does the model refuse the harmful prompts?)"
        )
    sign = mode.sign
    k = min(k, len(cand))
    n_conf = len(cand) if exact_all else min(len(cand), max(k, n_confirm or max(3 * k, 20)))
    confirm = top_k(cand, n_conf)
    out = patch_variants(
        model,
        batch,
        [(c,) for c in confirm],
        metric,
        mode=mode,
        pair_batch=pair_batch,
        max_rows=max_rows,
    )
    exact = effects(out.delta, gap, sign)
    exact_map = dict(zip(confirm, exact.tolist(), strict=True))
    circuit = top_k({c: (0.0 if math.isnan(v) else v) for c, v in exact_map.items()}, k)
    col = [confirm.index(c) for c in circuit]
    counts = pair_counts(boot, batch.n)  # [B, pair]
    eff_iv = _intervals(out.delta[:, col], gap, sign, counts, boot)
    joint = patch_variants(
        model,
        batch,
        [tuple(circuit[:i]) for i in range(1, k + 1)],
        metric,
        mode=mode,
        pair_batch=pair_batch,
        max_rows=max_rows,
    )
    curve = effects(joint.delta, gap, sign)
    restored = _intervals(joint.delta[:, -1:], gap, sign, counts, boot)[0]
    kept = fraction_kept(
        model,
        batch,
        circuit,
        list(cand),
        offsets,
        metric,
        gap,
        counts,
        boot,
        pair_batch,
    )
    stability = _stability(out.delta, gap, sign, circuit, confirm, counts, boot)
    agree = agreement({c: cand[c] for c in confirm}, exact_map, k)
    forwards = (
        any_attr.forwards + out.forwards + joint.forwards + 4 * math.ceil(batch.n / pair_batch)
    )
    return CircuitResult(
        tuple(circuit),
        tuple(eff_iv),
        tuple(cand[c] for c in circuit),
        restored,
        tuple(curve.tolist()),
        kept,
        stability,
        agree,
        "all" if n_conf == len(cand) else "confirmed",
        exact_map,
        attr,
        any_attr.gap(),
        k,
        offsets,
        mode,
        metric_name(metric),
        model.identity.fingerprint,
        batch.ids,
        forwards,
        time.perf_counter() - t0,
    )


def _intervals(
    delta: Tensor, gap: Tensor, sign: float, counts: Tensor, boot: Bootstrap
) -> list[Interval]:
    """Effect and bootstrap interval of each column of ``delta`` ``[pair, m]``."""
    value = effects(delta, gap, sign)
    resampled = (
        sign * (counts @ delta / delta.shape[0]) / (counts @ gap / delta.shape[0])[:, None]
    )  # [B, m]
    lo, hi = bounds(boot, resampled, value)
    method = pair_method(boot)
    return [
        Interval(
            float(v), float(a), float(b), boot.level, method, delta.shape[0], None, boot.n_resamples
        )
        for v, a, b in zip(value, lo, hi, strict=True)
    ]


def _stability(
    delta: Tensor,
    gap: Tensor,
    sign: float,
    circuit: list[Component],
    confirm: list[Component],
    counts: Tensor,
    boot: Bootstrap,
) -> RankStability:
    """Top-k Jaccard, Spearman and per-component inclusion over resampled pairs."""
    n = delta.shape[0]
    full = effects(delta, gap, sign).nan_to_num(0.0)
    resampled = (sign * (counts @ delta / n) / (counts @ gap / n)[:, None]).nan_to_num(0.0)
    k = len(circuit)
    want = torch.tensor([confirm.index(c) for c in circuit])
    top = torch.topk(resampled.abs(), k, dim=1).indices  # [B, k]
    member = torch.zeros_like(resampled, dtype=torch.bool).scatter_(1, top, True)  # [B, comp]
    inter = member[:, want].sum(1).double()
    jac = inter / (2 * k - inter)
    rho = torch.tensor(
        [spearman(b.numpy(), full.numpy()) if len(full) > 2 else math.nan for b in resampled],
        dtype=torch.float64,
    )
    return RankStability(
        pair_interval(boot, float(jac.mean()), jac, n=n),
        pair_interval(boot, float(np.nanmean(rho.numpy())), rho, n=n),
        tuple(member[:, want].double().mean(0).tolist()),
        boot.n_resamples,
    )


def effect_map(results: Iterable[PatchResult]) -> dict[Component, float]:
    """Every component's effect, over several results."""
    return {c: v for r in results for c, v in zip(r.components, r.flat().tolist(), strict=True)}


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
