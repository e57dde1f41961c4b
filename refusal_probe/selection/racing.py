"""Racing selection: score the candidates on growing prompt subsets and drop the dominated ones.

Exhaustive selection scores every candidate on every validation prompt, though most are plainly
out after a few: a late layer can never be chosen, a destructive ablation's KL is far over the
ceiling after eight prompts, a weak candidate's bypass far above the best one's. Racing scores
the prompts in rounds (a seeded shuffle of each class; the prompts seen double each round, from
``first``) and, after each round but the last, drops a candidate when

* its layer is at or past the cutoff (it can never be chosen; its first round is its record),
* a score is NaN, its KL's lower bound is over the ceiling, or its induce's upper bound is not
  above the induce threshold (it would fail a filter), or
* its bypass's lower bound is above the upper bound of a candidate that surely passes both
  filters (it would lose on bypass).

The bounds are on the mean over *all* the prompts of the class, which is what exhaustive scoring
computes: with ``m`` of the ``N`` prompts seen (drawn without replacement), mean ± z·s/√m ·
√((N − m)/(N − 1)), the finite-population interval (zero width once every prompt is seen). A
survivor is scored on every prompt, so its scores, and the choice among the survivors, are the
exhaustive ones; a candidate raced out keeps the means of the prompts it saw. ``z`` is wide (4)
because the elimination is tested many times per run; whether the winner matches exhaustive
scoring is checked on the organisms and SmolLM2 (``tests/test_racing.py``,
``benchmarks/racing.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: ``measure(candidates, harmful_rows, harmless_rows)`` → per-prompt bypass ``[k, h]``, KL
#: ``[k, l]`` and induce ``[k, l]`` of those candidates on those prompts, and the passes it took.
Measure = Callable[[list[int], list[int], list[int]], tuple[Tensor, Tensor, Tensor, int]]


@dataclass(frozen=True)
class RaceConfig:
    """How the race runs.

    Attributes:
        first: Prompts per class in the first round (the larger class; the other in proportion).
        z: Half-width of the elimination intervals, in standard errors.
        seed: Seed of the prompt order.
    """

    first: int = 8
    z: float = 4.0
    seed: int = 0


@dataclass(frozen=True)
class RaceResult:
    """What a race measured.

    Attributes:
        scores: ``[cand, 3]`` mean bypass, induce and KL over the prompts each candidate saw.
        seen: ``[cand]`` harmful prompts each candidate was scored on.
        raced_out: ``[cand]`` whether it was dropped before the last round.
        rounds: Rounds run.
        forward_passes: Passes the rounds took.
        rows: Prompt evaluations the rounds took (a candidate on a harmful prompt once, on a
            harmless prompt twice: ablated and added).
    """

    scores: Tensor
    seen: Tensor
    raced_out: Tensor
    rounds: int
    forward_passes: int
    rows: int


def schedule(n_harmful: int, n_harmless: int, first: int) -> list[tuple[int, int]]:
    """Cumulative prompts per class after each round: doubling from ``first``, ending at all.

    Small sets race too: the first round is at most half the prompts (at least 4).
    """
    n = max(n_harmful, n_harmless)
    sizes, m = [], max(1, min(first, max(4, n // 2)))
    while m < n:
        sizes.append(m)
        m *= 2
    sizes.append(n)
    return [(math.ceil(s * n_harmful / n), math.ceil(s * n_harmless / n)) for s in sizes]


def bounds(values: Tensor, population: int, z: float) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and finite-population bounds of each row's mean over ``population`` values.

    ``values`` is ``[cand, m]``: the ``m`` values seen of each candidate.
    """
    m = values.shape[1]
    mean = values.mean(1)
    if m >= population:
        return mean, mean, mean
    sd = values.std(1) if m > 1 else torch.full_like(mean, math.inf)
    half = z * sd / math.sqrt(m) * math.sqrt((population - m) / max(1, population - 1))
    return mean, mean - half, mean + half


def race(
    layers: Sequence[int],
    n_harmful: int,
    n_harmless: int,
    measure: Measure,
    *,
    cutoff: int,
    kl_threshold: float,
    induce_threshold: float,
    config: RaceConfig | None = None,
) -> RaceResult:
    """Race the candidates at ``layers`` (see the module docstring) and return their scores."""
    config = config or RaceConfig()
    gen = torch.Generator().manual_seed(config.seed)
    order_h = torch.randperm(n_harmful, generator=gen).tolist()
    order_l = torch.randperm(n_harmless, generator=gen).tolist()
    k = len(layers)
    bypass = [torch.empty(0, dtype=torch.float64) for _ in range(k)]
    kl = [torch.empty(0, dtype=torch.float64) for _ in range(k)]
    induce = [torch.empty(0, dtype=torch.float64) for _ in range(k)]
    alive = list(range(k))
    raced_out = torch.zeros(k, dtype=torch.bool)
    passes = rows = 0
    plan = schedule(n_harmful, n_harmless, config.first)
    done_h = done_l = 0
    for r, (mh, ml) in enumerate(plan):
        b, q, i, n = measure(alive, order_h[done_h:mh], order_l[done_l:ml])
        passes += n
        rows += len(alive) * ((mh - done_h) + 2 * (ml - done_l))
        for row, c in enumerate(alive):
            bypass[c] = torch.cat([bypass[c], b[row].double()])
            kl[c] = torch.cat([kl[c], q[row].double()])
            induce[c] = torch.cat([induce[c], i[row].double()])
        done_h, done_l = mh, ml
        if r == len(plan) - 1 or not alive:
            break
        out = _eliminated(
            [layers[c] for c in alive],
            torch.stack([bypass[c] for c in alive]),
            torch.stack([kl[c] for c in alive]),
            torch.stack([induce[c] for c in alive]),
            (n_harmful, n_harmless),
            cutoff=cutoff,
            kl_threshold=kl_threshold,
            induce_threshold=induce_threshold,
            z=config.z,
        )
        for row in sorted(out, reverse=True):
            raced_out[alive[row]] = True
            del alive[row]
    scores = (
        torch.stack(
            [torch.stack([bypass[c].mean(), induce[c].mean(), kl[c].mean()]) for c in range(k)]
        )
        if k
        else torch.empty(0, 3, dtype=torch.float64)
    )
    seen = torch.tensor([len(bypass[c]) for c in range(k)], dtype=torch.long)
    return RaceResult(scores, seen, raced_out, len(plan) if k else 0, passes, rows)


def _eliminated(
    layers: list[int],
    bypass: Tensor,
    kl: Tensor,
    induce: Tensor,
    populations: tuple[int, int],
    *,
    cutoff: int,
    kl_threshold: float,
    induce_threshold: float,
    z: float,
) -> list[int]:
    """Rows (of the alive candidates) to drop after a round."""
    n_h, n_l = populations
    b, b_lo, b_hi = bounds(bypass, n_h, z)
    q, q_lo, q_hi = bounds(kl, n_l, z)
    i, i_lo, i_hi = bounds(induce, n_l, z)
    late = torch.tensor([la >= cutoff for la in layers])
    nan = b.isnan() | q.isnan() | i.isnan()
    fails = late | nan | (q_lo > kl_threshold) | ~(i_hi > induce_threshold)
    sure = ~late & ~nan & (q_hi <= kl_threshold) & (i_lo > induce_threshold)
    out = fails.clone()
    if sure.any():
        best_hi = b_hi[sure].min()
        out |= b_lo > best_hi
    return [r for r in range(len(layers)) if bool(out[r])]
