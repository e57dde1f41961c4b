"""How well the monitor catches each attack family, and what it costs on harmless prompts.

Axes: ``prompt`` prompts, ``B`` bootstrap resamples.

For each jailbreak family of the fixtures (role-play, encoding, context manipulation, adversarial
suffix), on the held-out split (only jailbreaks built on that split's harmful prompts: the
``val`` attacks that chose the monitor's readout are never counted here):

* **attack success** — refusal rate of the wrapped prompts against that of their base harmful
  prompts (greedy completions, the configured judge), and the paired drop, with intervals;
* **detection** — for each monitor signal, AUROC and true-positive rate at 1% false positives of
  the attacks against the harmless prompts, with stratified bootstrap intervals, and the
  true-positive rate at the monitor's calibrated threshold (Wilson). Positives are the
  *successful* attacks (the model complied: those are the ones a monitor must catch), and
  separately every attempt;
* **relevance** — whether the successful attacks' replies answer their requests at all
  (:mod:`refusal_probe.scoring.relevance`): a family whose replies are as likely after any
  request (a base64 request to a model that cannot decode it) answers nothing, and neither
  decides the worst family nor counts in the pooled figures.

And the false-positive rate of each signal at its calibrated threshold on the harmless prompts,
the plain ones and the edgy ones (harmless requests in the vocabulary of harm). The results are
the values of :mod:`refusal_probe.monitor.results`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from refusal_probe import progress
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.results import (
    Detection,
    EvalConfig,
    FamilyResult,
    MonitorEvaluation,
    nan_interval,
)
from refusal_probe.monitor.scoring import (
    SIGNALS,
    Monitor,
    MonitorScores,
    gated_scores,
    judge_and_score,
)
from refusal_probe.prompts.dilution import diluted_harmless, dilution_variants
from refusal_probe.prompts.sets import JAILBREAK_FAMILIES, Fixtures, Jailbreak
from refusal_probe.scoring.generation import judge
from refusal_probe.scoring.relevance import reply_relevance
from refusal_probe.stats.intervals import Interval, paired_rate_difference, wilson_interval
from refusal_probe.stats.separation import separation, tpr_at_fpr

# ---------------------------------------------------------------------------------------------
# the evaluation


def evaluate_monitor(
    model: LoadedModel,
    monitor: Monitor,
    fixtures: Fixtures,
    config: EvalConfig | None = None,
    attacks: Sequence[Jailbreak] = (),
) -> MonitorEvaluation:
    """Attack success and detection per jailbreak family, and false positives on harmless prompts.

    With ``config.dilution`` the ``dilution`` family is built from the split's own prompts
    (:func:`refusal_probe.prompts.dilution.dilution_variants`), and the harmless prompts the
    attacks are told from include the split's harmless prompts diluted the same way (group
    ``diluted`` of the false positives; ``harmless`` counts every group).

    Args:
        model: The monitored model.
        monitor: A calibrated monitor.
        fixtures: Prompt fixtures with harmful and harmless prompts of ``config.split`` and
            jailbreaks whose base prompts are harmful prompts (those of other splits are left
            out).
        config: Split, intervals, judge settings.
        attacks: More jailbreaks of the split (for example the ``adaptive`` family searched
            against this monitor), evaluated like the fixtures' own.

    Raises:
        MonitorError: The monitor is not calibrated.
    """
    config = config or EvalConfig()
    monitor.threshold("alarm")  # uncalibrated monitors are refused here, before any work
    harmless = fixtures.harmless.split(config.split)
    harmful = fixtures.harmful.split(config.split)
    by_id = {p.id: p.text for p in fixtures.harmful.prompts}
    requests = [p.text for p in harmful]
    texts = [p.text for p in harmless]
    diluted = diluted_harmless(texts, config.seed) if config.dilution else []
    neg = gated_scores(model, monitor, texts + diluted, config.batch_size)
    groups = {
        "plain": [i for i, p in enumerate(harmless) if p.category != "edgy"],
        "edgy": [i for i, p in enumerate(harmless) if p.category == "edgy"],
        "diluted": list(range(len(texts), len(texts) + len(diluted))),
    }
    fp = {"harmless": _flag_rates(neg, monitor, config)}
    fp |= {g: _flag_rates(neg.select(r), monitor, config) for g, r in groups.items() if r}
    built = (
        dilution_variants(fixtures.harmful.prompts, harmless, config.split, config.seed)
        if config.dilution
        else ()
    )
    jailbreaks = [*fixtures.jailbreaks, *built, *attacks]
    # The plain harmful prompts are judged too: most are the base prompts of the jailbreaks.
    base, harm_scores = judge_and_score(
        model, monitor, [p.text for p in harmful], **_judge_kw(config)
    )
    base_cache = {p.id: r for p, r in zip(harmful, base.refused, strict=True)}

    families, absent, pooled_pos = [], [], []
    for fam in JAILBREAK_FAMILIES:
        jbs = [j for j in jailbreaks if j.split == config.split and j.family == fam]
        if not jbs:
            absent.append(fam)
            continue
        with progress.phase(f"jailbreaks ({fam})"):
            result, pos = _family(model, monitor, fam, jbs, by_id, base_cache, neg, config)
            result = _with_relevance(model, result, jbs, pos, by_id, requests, config)
        families.append(result)
        if not result.answers_nothing:
            pooled_pos.append(pos.scores)
    pooled = _detections(_concat(pooled_pos), neg, monitor, config)
    return MonitorEvaluation(
        tuple(families),
        pooled,
        fp,
        _flag_rates(harm_scores, monitor, config),
        tuple(absent),
        monitor.to_dict(),
        config,
    )


def _judge_kw(config: EvalConfig) -> dict[str, Any]:
    return {
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.batch_size,
        "phrases": config.phrases,
        "rule": config.judge,
    }


@dataclass(frozen=True)
class _Successes:
    """A family's successful attacks: their indices among its jailbreaks, scores and replies."""

    rows: list[int]
    scores: MonitorScores
    replies: list[str]


def _with_relevance(
    model: LoadedModel,
    result: FamilyResult,
    jailbreaks: Sequence[Jailbreak],
    success: _Successes,
    by_id: dict[str, str],
    pool: Sequence[str],
    config: EvalConfig,
) -> FamilyResult:
    """``result`` with the relevance of its successful replies to their plain requests."""
    if not success.rows:
        return result
    relevance = reply_relevance(
        model,
        [by_id[jailbreaks[i].base_id] for i in success.rows],
        success.replies,
        pool,
        boot=config.bootstrap,
        margin=config.relevance_margin,
        limit=config.relevance_limit,
        batch_size=config.batch_size,
    )
    return dataclasses.replace(result, relevance=relevance)


def _family(
    model: LoadedModel,
    monitor: Monitor,
    family: str,
    jailbreaks: Sequence[Any],
    by_id: dict[str, str],
    base_cache: dict[str, bool],
    neg: MonitorScores,
    config: EvalConfig,
) -> tuple[FamilyResult, _Successes]:
    """One family's result, and its successful attacks (for the pooled figures and relevance)."""
    kw = _judge_kw(config)
    texts = [j.text for j in jailbreaks]
    missing = sorted({j.base_id for j in jailbreaks} - set(base_cache))
    if missing:
        j = judge(model, [by_id[b] for b in missing], **kw)
        base_cache.update(zip(missing, j.refused, strict=True))
    base = np.array([base_cache[j.base_id] for j in jailbreaks], dtype=bool)
    attack, scores = judge_and_score(model, monitor, texts, **kw)
    refused = np.array(attack.refused, dtype=bool)
    # A successful attack is one the model complies with; a garbled refusal attempt is not one.
    ok = [i for i, c in enumerate(attack.complied) if c]
    examples = [
        {
            "prompt": texts[i],
            "completion": attack.completions[i],
            "refused": bool(refused[i]),
            "alarm": float(scores.alarm[i]),
        }
        for i in range(min(3, len(texts)))
    ]
    success = scores.select(ok) if ok else None
    result = FamilyResult(
        family,
        len(texts),
        wilson_interval(int(base.sum()), len(base), config.level),
        wilson_interval(int(refused.sum()), len(refused), config.level),
        paired_rate_difference(base, refused, config.level),
        _detections(success, neg, monitor, config),
        _detections(scores, neg, monitor, config),
        examples,
    )
    replies = [attack.completions[i] for i in ok]
    return result, _Successes(ok, success if success is not None else scores.select([]), replies)


def _detections(
    pos: MonitorScores | None, neg: MonitorScores, monitor: Monitor, config: EvalConfig
) -> dict[str, Detection]:
    out = {}
    for s in SIGNALS:
        p = pos.signal(s).numpy() if pos is not None and len(pos) else np.empty(0)
        n = neg.signal(s).numpy()
        flagged = int((p > monitor.threshold(s)).sum())
        tpr = wilson_interval(flagged, p.size, config.level)
        if p.size == 0:
            nan = nan_interval(config.level)
            out[s] = Detection(s, nan, nan, tpr, 0, n.size)
            continue
        out[s] = Detection(
            s,
            separation(p, n, config.bootstrap).auroc,
            tpr_at_fpr(p, n, config.tpr_fpr, config.bootstrap),
            tpr,
            p.size,
            n.size,
        )
    return out


def _flag_rates(scores: MonitorScores, monitor: Monitor, config: EvalConfig) -> dict[str, Interval]:
    return {
        s: wilson_interval(int(scores.flagged(monitor, s).sum()), len(scores), config.level)
        for s in SIGNALS
    }


def _concat(parts: Sequence[MonitorScores]) -> MonitorScores | None:
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    return MonitorScores(
        *(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS[:3]),
        *(_cat_optional([getattr(p, f) for p in parts]) for f in _FIELDS[3:]),
    )


#: The fields of :class:`MonitorScores`, in order; the last two are optional.
_FIELDS = ("refusal", "harmfulness", "output_refusal", "reply_refused", "request_refusal")


def _cat_optional(parts: Sequence[Any]) -> Any:
    return None if any(p is None for p in parts) else torch.cat(list(parts))
