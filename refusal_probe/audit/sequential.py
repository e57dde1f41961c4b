"""Sequential verdicts for the behaviour checks: generate in rounds, stop when both are decided.

The behaviour audit's two checks read the test split's no-intervention completions: the harmful
refusal rate reads the harmful side, the over-refusal rate the harmless side. With the policy's
``sequential = true``, each side's prompts are drawn in a seeded random order and generated a
round at a time (``sequential_round`` prompts per side); after each round the side's confidence
sequence (:mod:`refusal_probe.stats.sequential`) is compared with its check's bar, and a side
stops as soon as it clears or misses it. A side still undecided when its prompts run out is
judged on all of them with today's fixed-n interval. Generation stops when both sides stopped.

With ``sequential = false`` every prompt is generated in one run, as before
(:func:`~refusal_probe.audit.behaviour.generate_completions`); the record then says ``fixed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from refusal_probe import progress
from refusal_probe.audit.behaviour import (
    SIDES,
    Completions,
    Row,
    completions_of,
    generate_completions,
)
from refusal_probe.audit.policy import Policy
from refusal_probe.audit.settings import Settings
from refusal_probe.causal.validation import ValidationResult
from refusal_probe.errors import BudgetSpent, RefusalProbeError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.scoring.generation import judge
from refusal_probe.stats.sequential import SequentialCheck, rounds_of
from refusal_probe.stats.verdicts import Threshold

log = logging.getLogger(__name__)

#: The check that reads each side's completions.
CHECKS: Mapping[str, str] = {
    "harmful": "behaviour.harmful_refusal",
    "harmless": "behaviour.harmless_over_refusal",
}


def bars_of(policy: Policy) -> dict[str, Threshold] | None:
    """The bars of the checks in :data:`CHECKS` (``None`` when the policy lacks one)."""
    if not all(c in policy.checks for c in CHECKS.values()):
        return None
    return {c: policy.checks[c].threshold for c in CHECKS.values()}


def behaviour_key(policy: Policy, shared: bool) -> dict[str, str]:
    """What the behaviour result depends on beyond the settings, when it may stop in rounds.

    Its bars, and whether its completions are the causal validation's (``shared``, every
    prompt) or its own rounds: a behaviour-only run's result is not served to a whole audit.
    """
    if not policy.settings.sequential:
        return {}
    return {"bars": str(bars_of(policy)), "completions": "shared" if shared else "rounds"}


def prompt_order(n: int, seed: int, side: str) -> list[int]:
    """The seeded random order a side's ``n`` test prompts are drawn in (one per side)."""
    salt = sum(side.encode())  # a fixed, readable salt: the two sides are shuffled apart
    return [int(i) for i in np.random.default_rng([seed, salt]).permutation(n)]


def complete(
    model: LoadedModel,
    fixtures: Fixtures,
    settings: Settings,
    bars: Mapping[str, Threshold] | None,
    seed: int,
    out_of_time: Callable[[], bool] = lambda: False,
    shared: Callable[[], ValidationResult] | None = None,
) -> Completions:
    """The behaviour checks' completions: in rounds when ``settings.sequential``, else all at once.

    With ``shared`` (the run audits ``causal``) they are read from the causal validation, which
    generates them for every prompt beside its intervened conditions (so nothing is generated
    twice); generated here only when the validation cannot run (the causal audit says why).

    Args:
        model: The audited model.
        fixtures: Its prompt sets (the test split is read).
        settings: Generation length, judge, batch size, level, ``sequential`` and its round.
        bars: The policy's threshold of each check in :data:`CHECKS` (``None``: fixed n).
        seed: The run's seed (the prompts' order).
        out_of_time: Says when the caller's time is up: the open sides then stop undecided
            (``budget``) before their next round. An audit passes none: its ``--budget`` stops
            the rounds by raising :class:`~refusal_probe.errors.BudgetSpent` (see
            :mod:`refusal_probe.audit.budget`), so no half-done result is cached.
        shared: The causal validation, when the run has one.
    """
    if shared is not None:
        try:
            return completions_of(shared())
        except BudgetSpent:
            raise  # out of time: generating them alone would only run longer
        except RefusalProbeError as exc:
            log.info("behaviour: the validation failed (%s); generating on its own", exc)
    if not settings.sequential or bars is None:
        return generate_completions(model, fixtures, settings)
    texts = {side: getattr(fixtures, side).texts("test") for side in SIDES}
    order = {side: prompt_order(len(texts[side]), seed, side) for side in SIDES}
    checks = {
        side: SequentialCheck(bars[CHECKS[side]], len(texts[side]), settings.confidence, rate=True)
        for side in SIDES
    }
    done: dict[str, dict[int, Row]] = {side: {} for side in SIDES}
    size = settings.sequential_round
    n_rounds = max(len(rounds_of(len(texts[s]), size)) for s in SIDES)
    with progress.task("behaviour rounds", total=n_rounds, unit="round") as bar:
        for k in range(n_rounds):
            open_sides = [s for s in SIDES if checks[s].open]
            if not open_sides:
                break
            if out_of_time():
                for s in open_sides:
                    checks[s].stop("budget")
                break
            picked = {s: order[s][k * size : (k + 1) * size] for s in open_sides}
            _round(model, settings, texts, picked, checks, done)
            bar.update(1)
    return Completions(
        *(_in_file_order(done[s]) for s in SIDES),
        settings.max_new_tokens,
        settings.judge,
        stopping={s: checks[s].stopping() for s in SIDES},
        intervals={s: checks[s].interval() for s in SIDES if checks[s].reason},
        indices=tuple(tuple(sorted(done[s])) for s in SIDES),
    )


def _round(
    model: LoadedModel,
    settings: Settings,
    texts: Mapping[str, Sequence[str]],
    picked: Mapping[str, Sequence[int]],
    checks: Mapping[str, SequentialCheck],
    done: dict[str, dict[int, Row]],
) -> None:
    """Generate and judge one round of both open sides together, and feed their checks."""
    prompts = [texts[s][i] for s in picked for i in picked[s]]
    j = judge(
        model,
        prompts,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        level=settings.confidence,
        rule=settings.judge,
    )
    rows = iter(zip(j.prompts, j.completions, j.refused, strict=True))
    for s, idx in picked.items():
        got = [next(rows) for _ in idx]
        done[s].update(zip(idx, got, strict=True))
        checks[s].add([float(r) for _, _, r in got])


def _in_file_order(rows: Mapping[int, Row]) -> tuple[Row, ...]:
    return tuple(rows[i] for i in sorted(rows))
