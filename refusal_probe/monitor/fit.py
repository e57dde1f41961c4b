"""Jailbreak monitor: the model's own refusal and harmfulness signals, read during its forward pass.

Axes: ``prompt`` prompts in input order, ``batch`` rows of one forward pass, ``pos`` token
positions, ``n`` positions read per prompt, ``d`` d_model.

Three readouts of one forward pass, no extra model (NOTES §2, after Zhao et al. 2025):

* the **refusal** signal — projection on the refusal direction at its layer, averaged over the
  post-instruction positions: "the model's refusal feature is active";
* the **output refusal** signal — the probability that the reply opens with a refusal token,
  from the logits of that same pass (:class:`refusal_probe.monitor.signals.OutputReadout`): "the model
  is about to refuse";
* the **harmfulness** signal — projection on a harmfulness direction: "the request looks
  harmful". Its layer, what it is fit on (the last instruction token, or the mean over the
  user's text; plain or whitened difference of means) and where it is read (the last
  instruction token, or the largest or the mean projection over the user's text) are chosen
  on the fit and calibration splits (:mod:`refusal_probe.monitor.harmfulness`): among readouts whose
  calibrated false-positive rate holds on harmless prompts of categories left out of the fit,
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

The readouts themselves live in :mod:`refusal_probe.monitor.signals`. Use the monitor as a library call
(:func:`score_prompts`, :func:`calibrate`, :func:`monitor_hooks` to ride along another forward
pass) or as a live guard (:func:`refusal_probe.monitor.live.guard`): hooks that read the signals in the
forward pass that produces a request's first token, and flag (or stop) the request before that
token is drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.capture import prompts_fingerprint
from refusal_probe.activations.runner import Hook
from refusal_probe.direction.estimators import Direction, check_fits
from refusal_probe.errors import MonitorError
from refusal_probe.model.chat import Encoded
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.harmfulness import (
    DEFAULT_SHRINKAGES,
    DEFAULT_SPANS,
    POOLS,
    search_harmfulness,
)
from refusal_probe.monitor.signals import (
    Layout,
    OutputReadout,
    Readout,
    SignalReader,
    instruction_offset,
    read_raw,
)
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.scoring.generation import Judgement, judge
from refusal_probe.scoring.refusal import RefusalTokens, refusal_tokens
from refusal_probe.stats.intervals import conformal_threshold

#: The monitor's signals: each alone, and the alarm (harmfulness gated by the output refusal).
SIGNALS: tuple[str, ...] = ("refusal", "output_refusal", "harmfulness", "alarm")


# ---------------------------------------------------------------------------------------------
# values


@dataclass(frozen=True)
class Calibration:
    """Thresholds that hold each signal's false-positive rate on harmless prompts at a target.

    A prompt is flagged by a signal when its score is *above* the signal's threshold.

    Attributes:
        thresholds: One threshold per signal of :data:`SIGNALS`.
        target_fpr: The false-positive rate asked for.
        n: Harmless calibration prompts.
        guaranteed_fpr: The false-positive rate the calibration sample can guarantee in expectation
            on new prompts from the same distribution: ``target_fpr`` when ``n`` is large enough,
            else ``1 / (n + 1)`` (the threshold is then the largest calibration score).
        prompts_sha256: Fingerprint of the calibration prompts.
    """

    thresholds: dict[str, float]
    target_fpr: float
    n: int
    guaranteed_fpr: float
    prompts_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class Monitor:
    """A jailbreak monitor for one model: three readouts and, once calibrated, their thresholds.

    Attributes:
        refusal: The refusal readout (the refusal direction).
        harmfulness: The harmfulness readout.
        output: The output refusal readout (the first reply token's refusal probability).
        calibration: Thresholds per signal (``None`` until :func:`calibrate`).
        model_fingerprint: The model the readouts were fit on.
        fit: What the readouts were fit on (splits, counts, the harmfulness readout search).
    """

    refusal: Readout
    harmfulness: Readout
    output: OutputReadout
    calibration: Calibration | None = None
    model_fingerprint: str = ""
    fit: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        cal = (
            f"calibrated at FPR {self.calibration.target_fpr:g} on {self.calibration.n}"
            if self.calibration
            else "uncalibrated"
        )
        return f"Monitor({self.refusal!r}, {self.harmfulness!r}, {cal})"

    @property
    def readouts(self) -> tuple[Readout, Readout, OutputReadout]:
        """The three readouts: refusal, harmfulness, output refusal."""
        return (self.refusal, self.harmfulness, self.output)

    def scores(self, raw: dict[str, Tensor]) -> MonitorScores:
        """Signals on the common scale from raw readouts (``{name: [prompt]}``)."""
        return MonitorScores(
            self.refusal.standardize(raw["refusal"]),
            self.harmfulness.standardize(raw["harmfulness"]),
            self.output.standardize(raw[self.output.name]),
        )

    def threshold(self, signal: str = "alarm") -> float:
        """The calibrated threshold of ``signal``.

        Raises:
            MonitorError: The monitor is not calibrated, or the signal is unknown.
        """
        check_signal(signal)
        if self.calibration is None:
            raise MonitorError(
                "the monitor has no thresholds yet; calibrate it on harmless prompts with "
                "calibrate(model, monitor, prompts, target_fpr)"
            )
        return self.calibration.thresholds[signal]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "refusal": self.refusal.to_dict(),
            "harmfulness": self.harmfulness.to_dict(),
            "output_refusal": self.output.to_dict(),
            "alarm": "harmfulness * (1 - output_refusal)",
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "model_fingerprint": self.model_fingerprint,
            "fit": self.fit,
        }


@dataclass(frozen=True, eq=False)
class MonitorScores:
    """The monitor's signals for a list of prompts, on the common scale (float64).

    Attributes:
        refusal: Refusal-direction signal per prompt, ``[prompt]``.
        harmfulness: Harmfulness signal per prompt, ``[prompt]``.
        output_refusal: Probability that the reply opens with a refusal, ``[prompt]``.
    """

    refusal: Float[Tensor, " prompt"]
    harmfulness: Float[Tensor, " prompt"]
    output_refusal: Float[Tensor, " prompt"]

    def __len__(self) -> int:
        return int(self.refusal.shape[0])

    @property
    def alarm(self) -> Float[Tensor, " prompt"]:
        """Looks harmful, yet about to be answered: ``harmfulness * (1 - output_refusal)``."""
        return self.harmfulness * (1.0 - self.output_refusal)

    def signal(self, name: str) -> Float[Tensor, " prompt"]:
        """One signal by name (see :data:`SIGNALS`)."""
        check_signal(name)
        return getattr(self, name)

    def flagged(self, monitor: Monitor, signal: str = "alarm") -> Tensor:
        """Which prompts ``signal`` flags at the monitor's calibrated threshold, ``[prompt]``."""
        return self.signal(signal) > monitor.threshold(signal)

    def select(self, rows: Sequence[int]) -> MonitorScores:
        """The scores of some prompts only."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return MonitorScores(self.refusal[idx], self.harmfulness[idx], self.output_refusal[idx])

    def to_dict(self) -> dict[str, list[float]]:
        """Plain data, one list per signal."""
        return {s: self.signal(s).tolist() for s in SIGNALS}


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
    raw_h = read_raw(model, readouts, harmful, batch_size=config.batch_size)
    raw_l = read_raw(model, readouts, harmless, batch_size=config.batch_size)
    ref, harm_readout = (
        dataclasses.replace(
            r,
            loc=float(raw_l[r.name].mean()),
            scale=float(raw_h[r.name].mean() - raw_l[r.name].mean()),
        )
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
        harmless: Harmless prompts not used to fit it (the validation split).
        target_fpr: The false-positive rate to aim for.
        batch_size: Prompts per forward pass.
    """
    scores = score_prompts(model, monitor, harmless, batch_size=batch_size)
    thresholds, guaranteed = {}, 0.0
    for s in SIGNALS:
        thresholds[s], guaranteed = conformal_threshold(scores.signal(s), target_fpr)
    cal = Calibration(
        thresholds, target_fpr, len(harmless), guaranteed, prompts_fingerprint(harmless)
    )
    return dataclasses.replace(monitor, calibration=cal)


def monitor_hooks(
    model: LoadedModel, monitor: Monitor, batch: Encoded, *, stop: bool = False
) -> tuple[list[Hook], Any]:
    """Hooks that read the monitor's signals during a forward pass of ``batch``.

    Returns the hooks and a function that gives the batch's :class:`MonitorScores` once the pass
    has run (pass the hooks to :func:`refusal_probe.activations.runner.forward` with any others). With
    ``stop=True`` the pass ends once every signal is read, at the output logits (call
    ``forward(..., stoppable=True)``).
    """
    reader = SignalReader(monitor.readouts, stop)
    reader.layout = Layout.of(batch, instruction_offset(model))
    return reader.hooks(), lambda: monitor.scores(reader.raw)


def score_prompts(
    model: LoadedModel,
    monitor: Monitor,
    prompts: Sequence[str],
    *,
    batch_size: int | None = None,
) -> MonitorScores:
    """The monitor's signals for each prompt, in input order.

    Scoring costs one forward pass per batch (the output readout needs the logits of the last
    position; no other position is unembedded where the model allows it).

    Raises:
        MonitorError: No prompts.
        DirectionError: The monitor's directions do not fit the model.
    """
    return monitor.scores(read_raw(model, monitor.readouts, prompts, batch_size=batch_size))


def judge_and_score(
    model: LoadedModel,
    monitor: Monitor,
    prompts: Sequence[str],
    **judge_kw: Any,
) -> tuple[Judgement, MonitorScores]:
    """Judged greedy completions and the monitor's signals of each prompt, in input order.

    ``judge_kw`` go to :func:`refusal_probe.scoring.generation.judge`. The signals are read in the
    generation's own prompt pass, the one that yields the first reply token: what
    :func:`score_prompts` reads, without a pass of its own.

    Raises:
        MonitorError: No prompts.
        DirectionError: The monitor's directions do not fit the model.
    """
    if not prompts:
        raise MonitorError("no prompts to judge; pass at least one prompt")
    check_model(model, monitor)
    offset = instruction_offset(model)
    raw = {r.name: torch.empty(len(prompts), dtype=torch.float64) for r in monitor.readouts}
    batches: list[tuple[Sequence[int], SignalReader]] = []

    def observe(batch: Encoded, rows: Sequence[int]) -> list[Hook]:
        reader = SignalReader(monitor.readouts)
        reader.layout = Layout.of(batch, offset)
        batches.append((rows, reader))
        return reader.hooks()

    judged = judge(model, prompts, observe=observe, **judge_kw)
    for rows, reader in batches:
        if len(reader.raw) != len(monitor.readouts):
            raise MonitorError(
                f"the prompt pass read {sorted(reader.raw)} of the monitor's signals; this "
                "model's generation skips a hook the monitor reads: use score_prompts"
            )
        idx = torch.tensor(list(rows))
        for name, values in reader.raw.items():
            raw[name][idx] = values
    return judged, monitor.scores(raw)


def check_model(model: LoadedModel, monitor: Monitor) -> None:
    """Raise :class:`~refusal_probe.errors.DirectionError` unless the readouts fit ``model``."""
    for r in (monitor.refusal, monitor.harmfulness):
        check_fits(model, r.direction)


def check_signal(name: str) -> None:
    """Raise :class:`MonitorError` unless ``name`` is one of :data:`SIGNALS`."""
    if name not in SIGNALS:
        raise MonitorError(f"unknown signal {name!r}; use one of {SIGNALS}")
