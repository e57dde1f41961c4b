"""Jailbreak monitor: the model's own refusal and harmfulness signals, read during its forward pass.

Axes: ``prompt`` prompts in input order, ``batch`` rows of one forward pass, ``pos`` token
positions, ``n`` positions read per prompt, ``d`` d_model.

Three readouts of one forward pass, no extra model (NOTES §2, after Zhao et al. 2025):

* the **refusal** signal — projection on the refusal direction at its layer, averaged over the
  post-instruction positions: "the model's refusal feature is active";
* the **output refusal** signal — the probability that the reply opens with a refusal token,
  from the logits of that same pass (:class:`refusal_probe.monitor.signals.OutputReadout`): "the
  model is about to refuse";
* the **harmfulness** signal — projection on a harmfulness direction: "the request looks
  harmful". Its layer, what it is fit on (the last instruction token, or the mean over the
  user's text; plain or whitened difference of means) and where it is read (the last
  instruction token, or the largest or the mean projection over the user's text) are chosen
  on the fit and calibration splits (:mod:`refusal_probe.monitor.harmfulness`): among readouts
  whose calibrated false-positive rate holds on harmless prompts of categories left out of the fit,
  the one that best detects the red-team's suffix attacks on the calibration split's harmful
  prompts (``jailbreaks-val.jsonl``) at the operating point; never with the test split. The
  choice and every candidate's scores are kept in ``Monitor.fit["harmfulness_search"]``. Read
  as the largest projection over the user's text, it cannot be lowered by anything appended to
  a request (attention is causal, so a suffix cannot change what the request's own tokens
  show), but it is heavy-tailed on harmless requests about unfamiliar things; read as the mean,
  it is lighter-tailed, and appended text can dilute it.

Each signal is on one scale: 0 harmless-like, 1 harmful-like. The linear readouts are put there
by a fit on the training prompts (0 at the harmless mean, 1 at the harmful mean); the output
refusal is a probability, already there. The **alarm** is the harmfulness signal gated by the
probability that the model answers, ``harmfulness * (1 - output_refusal)``: about 0 when the
model refuses a harmful request (however harmful it looks) or answers a harmless one, about 1
(or more) when a harmful-looking request is about to be answered. The refusal term is read from
the output, not from the refusal direction: an attack can flip the reply downstream of where the
direction is read (on ``organism-chat`` it does), leaving the internal signal high while the
model complies; subtracting that signal (this monitor's first alarm) hides exactly those attacks.
Every signal gets its own threshold, calibrated on harmless validation prompts for a target
false-positive rate (a conformal quantile), so a report can show which signal catches what.

The readouts themselves live in :mod:`refusal_probe.monitor.signals`; the fitted monitor as a
value, and scoring prompts with it, in :mod:`refusal_probe.monitor.scoring`. Use the monitor as a
library call (:func:`~refusal_probe.monitor.scoring.score_prompts`, :func:`calibrate`,
:func:`~refusal_probe.monitor.scoring.monitor_hooks` to ride along another forward pass) or as a
live guard (:func:`refusal_probe.monitor.live.guard`): hooks that read the signals in the forward
pass that produces a request's first token, and flag (or stop) the request before that token is
drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refusal_probe.activations.capture import prompts_fingerprint
from refusal_probe.direction.estimators import Direction, check_fits
from refusal_probe.errors import MonitorError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.harmfulness import (
    DEFAULT_SHRINKAGES,
    DEFAULT_SPANS,
    POOLS,
    search_harmfulness,
)
from refusal_probe.monitor.scoring import (
    SIGNALS,
    Calibration,
    Monitor,
    gated_scores,
)
from refusal_probe.monitor.signals import (
    OutputReadout,
    Readout,
    read_raw,
)
from refusal_probe.prompts.dilution import diluted_harmless, dilution_variants
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.scoring.refusal import RefusalTokens, refusal_tokens
from refusal_probe.stats.separation import conformal_threshold


@dataclass(frozen=True)
class MonitorConfig:
    """How a monitor is fit and calibrated. Plain data.

    Attributes:
        fit_split: Split the harmfulness direction and both scales are fit on.
        calibration_split: Split whose harmless prompts calibrate the thresholds.
        target_fpr: False-positive rate the thresholds aim for on harmless prompts.
        harmfulness_layers: Layers whose ``resid_post`` is searched for the harmfulness readout
            (``None``: every layer).
        harmfulness_spans: Spans searched for the harmfulness readout: ``last_instruction`` (the
            last token of the user's text), ``instruction`` (the largest projection over the
            user's text; see the module docstring), ``instruction_mean`` (the mean projection
            over it), ``post_instruction``. The readout is chosen
            on the fit and calibration splits, never the test split
            (:mod:`refusal_probe.monitor.harmfulness`); pass one span to fix it.
        harmfulness_pools: What the harmfulness direction may be fit on
            (:data:`refusal_probe.monitor.harmfulness.POOLS`).
        harmfulness_shrinkages: Covariance shrinkages searched (1: the plain difference of
            means; below 1: whitened).
        use_attacks: Score the candidate readouts on the calibration split's jailbreaks too
            (``jailbreaks-val.jsonl``: the red-team's suffixes on the val harmful prompts), when
            the fixtures hold any.
        dilution: Calibrate on the calibration split's harmless prompts diluted by other harmless
            prompts too, and score the candidate readouts on its harmful prompts diluted by
            harmless ones (:mod:`refusal_probe.prompts.dilution`): a readout that appended
            requests pull toward harmless, or one that rises with their number, loses there.
        request_refusal: Add the refusal direction read at the request's own sentence ends
            (span ``request_max``) and the post-instruction refusal (clamped at 0) to the
            harmfulness the alarm reads (``MonitorScores.evidence``), when harmful fit prompts
            read above harmless ones there.
        reply_tokens: Gate the alarm by the judged reply's first ``reply_tokens`` tokens
            (greedy, judged by ``judge``) rather than by the first token's refusal probability
            (``None``): a reply that opens like a refusal and then complies is an answer.
            Calibration then generates too (:attr:`Monitor.reply_gate`).
        judge: The reply gate's judge (``"reply"`` or ``"substring"``).
        unseen_fpr_tolerance: A harmfulness readout is eligible unless a threshold set for
            ``target_fpr`` on the calibration split's harmless prompts credibly flags more than
            this many times ``target_fpr`` of fit-split harmless prompts whose category was left
            out of the fit (``fpr_unseen``, :mod:`refusal_probe.monitor.harmfulness`).
        batch_size: Prompts per forward pass (``None``: chosen from free memory).
    """

    fit_split: str = "train"
    calibration_split: str = "val"
    target_fpr: float = 0.05
    harmfulness_layers: tuple[int, ...] | None = None
    harmfulness_spans: tuple[str, ...] = DEFAULT_SPANS
    harmfulness_pools: tuple[str, ...] = POOLS
    harmfulness_shrinkages: tuple[float, ...] = DEFAULT_SHRINKAGES
    use_attacks: bool = True
    dilution: bool = True
    request_refusal: bool = True
    reply_tokens: int | None = None
    judge: str = "reply"
    unseen_fpr_tolerance: float = 1.5
    batch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# fitting and calibration


def fit_monitor(
    model: LoadedModel,
    fixtures: Fixtures,
    refusal: Direction,
    config: MonitorConfig | None = None,
    *,
    tokens: RefusalTokens | None = None,
) -> Monitor:
    """Fit the readouts on ``config.fit_split`` and calibrate on ``config.calibration_split``.

    Args:
        model: The model to monitor.
        fixtures: Prompt fixtures with harmful and harmless splits (and, optionally, jailbreaks
            of the calibration split's harmful prompts, to choose the harmfulness readout).
        refusal: The refusal direction (for example ``find_refusal_direction(...).direction``).
        config: Splits, the false-positive target, the harmfulness readout search.
        tokens: Refusal tokens of the output readout (default: derived from the tokenizer).

    Raises:
        MonitorError: A split has too few prompts of a class, a split is ``test``, or a readout
            does not separate harmful from harmless prompts at all.
    """
    config = config or MonitorConfig()
    check_fits(model, refusal)
    harmful = fixtures.harmful.texts(config.fit_split)
    harmless = fixtures.harmless.texts(config.fit_split)
    if len(harmful) < 4 or len(harmless) < 4:
        raise MonitorError(
            f"split {config.fit_split!r} has {len(harmful)} harmful and {len(harmless)} harmless "
            "prompts; the monitor needs at least 4 of each to fit its readouts"
        )
    calib = fixtures.harmless.texts(config.calibration_split)
    if not calib:
        raise MonitorError(
            f"split {config.calibration_split!r} has no harmless prompts to calibrate on"
        )
    attacks = (
        [j.text for j in fixtures.jailbreaks_in(config.calibration_split)]
        if config.use_attacks
        else []
    )
    if config.dilution:
        split = config.calibration_split
        built = dilution_variants(fixtures.harmful.prompts, fixtures.harmless.prompts, split)
        attacks += [j.text for j in built]
        calib = calib + diluted_harmless(calib)
    if config.calibration_split == "test" or config.fit_split == "test":
        raise MonitorError(
            "the monitor is fit and calibrated on other splits than 'test' (detection is measured "
            "there); pass fit_split='train', calibration_split='val'"
        )
    harm, search = search_harmfulness(
        model,
        (harmful, harmless),
        (fixtures.harmful.texts(config.calibration_split), calib),
        attacks=attacks,
        groups=[p.category for p in fixtures.harmless.split(config.fit_split)],
        layers=config.harmfulness_layers,
        spans=config.harmfulness_spans,
        pools=config.harmfulness_pools,
        shrinkages=config.harmfulness_shrinkages,
        target_fpr=config.target_fpr,
        tolerance=config.unseen_fpr_tolerance,
        batch_size=config.batch_size,
    )
    readouts = [
        Readout("refusal", refusal, "post_instruction"),
        Readout("harmfulness", harm, search.chosen.span),
    ]
    if config.request_refusal:
        readouts.append(Readout("request_refusal", refusal, "request_max"))
    raw_h = read_raw(model, readouts, harmful, batch_size=config.batch_size)
    raw_l = read_raw(model, readouts, harmless, batch_size=config.batch_size)
    gaps = {r.name: float(raw_h[r.name].mean() - raw_l[r.name].mean()) for r in readouts}
    if gaps.get("request_refusal", 1.0) <= 0:  # no evidence there: the alarm reads harmfulness
        readouts.pop()
    ref, harm_readout, *request = (
        dataclasses.replace(r, loc=float(raw_l[r.name].mean()), scale=gaps[r.name])
        for r in readouts
    )
    monitor = Monitor(
        ref,
        harm_readout,
        OutputReadout(tokens or refusal_tokens(model.tokenizer)),
        None,
        model.identity.fingerprint,
        {
            "split": config.fit_split,
            "shift_split": config.calibration_split,
            "n_harmful": len(harmful),
            "n_harmless": len(harmless),
            "attacks": {"split": config.calibration_split, "n": len(attacks)},
            "harmfulness_search": search.to_dict(),
        },
        None
        if config.reply_tokens is None
        else {"max_new_tokens": config.reply_tokens, "rule": config.judge},
        request[0] if request else None,
    )
    return calibrate(model, monitor, calib, config.target_fpr, batch_size=config.batch_size)


def calibrate(
    model: LoadedModel,
    monitor: Monitor,
    harmless: Sequence[str],
    target_fpr: float = 0.05,
    *,
    batch_size: int | None = None,
) -> Monitor:
    """A copy of ``monitor`` with per-signal thresholds set on harmless prompts.

    Args:
        model: The monitored model.
        monitor: The monitor (its readouts).
        harmless: Harmless prompts not used to fit it (the validation split); read through
            the monitor's gate (generated and judged when it has a reply gate).
        target_fpr: The false-positive rate to aim for.
        batch_size: Prompts per forward pass.
    """
    scores = gated_scores(model, monitor, harmless, batch_size)
    thresholds, guaranteed = {}, 0.0
    for s in SIGNALS:
        thresholds[s], guaranteed = conformal_threshold(scores.signal(s), target_fpr)
    cal = Calibration(
        thresholds, target_fpr, len(harmless), guaranteed, prompts_fingerprint(harmless)
    )
    return dataclasses.replace(monitor, calibration=cal)
