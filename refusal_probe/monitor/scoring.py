"""A fitted jailbreak monitor as a value, and scoring prompts with it.

Axes: ``prompt`` prompts in input order, ``batch`` rows of one forward pass.

A :class:`Monitor` holds three readouts (:mod:`refusal_probe.monitor.signals`) and, once
calibrated, one threshold per signal of :data:`SIGNALS`; :class:`MonitorScores` are its signals
for a list of prompts, on the common scale (0 harmless-like, 1 harmful-like). How a monitor is fit
and calibrated is :mod:`refusal_probe.monitor.fit`. Scoring reads every signal in one forward pass
(:func:`score_prompts`), in hooks riding another pass (:func:`monitor_hooks`), or in the prompt
pass of a judged generation (:func:`judge_and_score`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.runner import Hook
from refusal_probe.direction.estimators import check_fits
from refusal_probe.errors import MonitorError
from refusal_probe.model.chat import Encoded
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.signals import (
    Layout,
    OutputReadout,
    Readout,
    SignalReader,
    instruction_offset,
    read_raw,
    sentence_stops,
)
from refusal_probe.scoring.generation import Judgement, judge

#: The monitor's signals: each alone, and the alarm (harmfulness gated by the output refusal).
SIGNALS: tuple[str, ...] = ("refusal", "output_refusal", "harmfulness", "alarm")


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
        reply_gate: The judge that reads the streamed reply (keyword arguments of
            :func:`~refusal_probe.scoring.generation.judge`: ``max_new_tokens`` the reply's
            first tokens, ``rule``), when the alarm is gated by the reply rather than by its
            first token; ``None``: the first token's refusal probability gates it. With a reply
            gate the monitor is calibrated and evaluated on judged generations
            (:func:`judge_and_score`).
        request_refusal: The refusal direction read at the request's own sentence ends
            (span ``request_max``), when the alarm adds up the evidence (see
            :attr:`MonitorScores.evidence`); ``None``: the alarm reads harmfulness alone.
    """

    refusal: Readout
    harmfulness: Readout
    output: OutputReadout
    calibration: Calibration | None = None
    model_fingerprint: str = ""
    fit: dict[str, Any] = field(default_factory=dict)
    reply_gate: dict[str, Any] | None = None
    request_refusal: Readout | None = None

    def __repr__(self) -> str:
        cal = (
            f"calibrated at FPR {self.calibration.target_fpr:g} on {self.calibration.n}"
            if self.calibration
            else "uncalibrated"
        )
        return f"Monitor({self.refusal!r}, {self.harmfulness!r}, {cal})"

    @property
    def readouts(self) -> tuple[Readout | OutputReadout, ...]:
        """The readouts: refusal, harmfulness, output refusal (and the request's refusal)."""
        extra = () if self.request_refusal is None else (self.request_refusal,)
        return (self.refusal, self.harmfulness, self.output, *extra)

    def scores(self, raw: dict[str, Tensor]) -> MonitorScores:
        """Signals on the common scale from raw readouts (``{name: [prompt]}``)."""
        req = self.request_refusal
        return MonitorScores(
            self.refusal.standardize(raw["refusal"]),
            self.harmfulness.standardize(raw["harmfulness"]),
            self.output.standardize(raw[self.output.name]),
            None,
            None if req is None else req.standardize(raw[req.name]),
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
            "alarm": (
                "harmfulness"
                if self.request_refusal is None
                else "(harmfulness + request_refusal + max(refusal, 0))"
            )
            + (
                " * (1 - output_refusal)"
                if self.reply_gate is None
                else " * (1 - reply judged a refusal)"
            ),
            "request_refusal": None
            if self.request_refusal is None
            else self.request_refusal.to_dict(),
            "reply_gate": self.reply_gate,
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
    reply_refused: Float[Tensor, " prompt"] | None = None
    request_refusal: Float[Tensor, " prompt"] | None = None

    def __len__(self) -> int:
        return int(self.refusal.shape[0])

    @property
    def evidence(self) -> Float[Tensor, " prompt"]:
        """How harmful the request reads: harmfulness (+ ``request_refusal + max(refusal, 0)``).

        The second term comes with a request refusal readout. Harmfulness and it are read at the request's own sentence ends, which nothing appended to it
        can change; the refusal at the post-instruction tokens is downstream of any suffix, so
        it only adds (clamped at 0): an attacker can remove its share, never subtract.
        """
        if self.request_refusal is None:
            return self.harmfulness
        return self.harmfulness + self.request_refusal + self.refusal.clamp_min(0.0)

    @property
    def gate(self) -> Float[Tensor, " prompt"]:
        """How surely the model refuses: the judged reply (1 or 0), else its first token."""
        return self.output_refusal if self.reply_refused is None else self.reply_refused

    @property
    def alarm(self) -> Float[Tensor, " prompt"]:
        """Looks harmful, yet answered: ``evidence * (1 - gate)``."""
        return self.evidence * (1.0 - self.gate)

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
        reply, req = (
            None if t is None else t[idx] for t in (self.reply_refused, self.request_refusal)
        )
        return MonitorScores(
            self.refusal[idx], self.harmfulness[idx], self.output_refusal[idx], reply, req
        )

    def to_dict(self) -> dict[str, list[float]]:
        """Plain data, one list per signal."""
        return {s: self.signal(s).tolist() for s in SIGNALS}


def monitor_hooks(
    model: LoadedModel, monitor: Monitor, batch: Encoded, *, stop: bool = False
) -> tuple[list[Hook], Any]:
    """Hooks that read the monitor's signals during a forward pass of ``batch``.

    Returns the hooks and a function that gives the batch's :class:`MonitorScores` once the pass
    has run (pass the hooks to :func:`refusal_probe.activations.runner.forward` with any others).
    With ``stop=True`` the pass ends once every signal is read, at the output logits (call
    ``forward(..., stoppable=True)``).
    """
    reader = SignalReader(monitor.readouts, stop)
    reader.layout = Layout.of(batch, instruction_offset(model), sentence_stops(model))
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
    offset, stops = instruction_offset(model), sentence_stops(model)
    raw = {r.name: torch.empty(len(prompts), dtype=torch.float64) for r in monitor.readouts}
    batches: list[tuple[Sequence[int], SignalReader]] = []

    def observe(batch: Encoded, rows: Sequence[int]) -> list[Hook]:
        reader = SignalReader(monitor.readouts)
        reader.layout = Layout.of(batch, offset, stops)
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
    scores = monitor.scores(raw)
    if monitor.reply_gate is not None:
        refused = torch.tensor(judged.refused, dtype=torch.float64)
        scores = dataclasses.replace(scores, reply_refused=refused)
    return judged, scores


def gated_scores(
    model: LoadedModel, monitor: Monitor, prompts: Sequence[str], batch_size: int | None = None
) -> MonitorScores:
    """The signals of ``prompts`` as the monitor's gate reads them.

    With a reply gate, from judged generations (:func:`judge_and_score` with the gate's judge);
    without one, from one forward pass per batch (:func:`score_prompts`).
    """
    if monitor.reply_gate is None:
        return score_prompts(model, monitor, prompts, batch_size=batch_size)
    return judge_and_score(model, monitor, prompts, batch_size=batch_size, **monitor.reply_gate)[1]


def check_model(model: LoadedModel, monitor: Monitor) -> None:
    """Raise :class:`~refusal_probe.errors.DirectionError` unless the readouts fit ``model``."""
    for r in (monitor.refusal, monitor.harmfulness):
        check_fits(model, r.direction)


def check_signal(name: str) -> None:
    """Raise :class:`MonitorError` unless ``name`` is one of :data:`SIGNALS`."""
    if name not in SIGNALS:
        raise MonitorError(f"unknown signal {name!r}; use one of {SIGNALS}")
