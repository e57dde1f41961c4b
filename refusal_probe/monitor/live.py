"""The monitor as a live guard: flag (or stop) a jailbreak attempt before anything is generated.

Inside ``with guard(model, monitor):`` every forward pass of the model is watched. A pass whose
input ends with the chat template's assistant header is a *request* (the prompt pass that yields
the first reply token); its monitor signals are read by hooks in that same pass, so flagging costs
no extra forward pass, and with ``action="raise"`` the pass is stopped by :class:`JailbreakAlarm`
before the first token exists. Later generation steps are not scored.

Axes: ``batch`` rows of one forward pass, ``pos`` token positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from refusal_probe.errors import MonitorError, RefusalProbeError
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.scoring import (
    SIGNALS,
    Monitor,
    MonitorScores,
    check_model,
    check_signal,
)
from refusal_probe.monitor.signals import (
    Layout,
    SignalReader,
    instruction_offset,
    sentence_stops,
)

#: What a guard does with a flagged request.
ACTIONS: tuple[str, ...] = ("flag", "raise")


@dataclass(frozen=True)
class Alert:
    """A request the guard flagged.

    Attributes:
        request: Index of the flagged prompt pass among those the guard saw (0-based).
        row: The request's row in that forward pass.
        text: The request as the model saw it (special tokens removed).
        scores: Every signal's score.
        signals: The signals above their thresholds (the guard's ``signal`` among them).
    """

    request: int
    row: int
    text: str
    scores: dict[str, float]
    signals: tuple[str, ...]


class JailbreakAlarm(RefusalProbeError):
    """Raised by a guard with ``action="raise"``: a request was flagged before generation.

    Attributes:
        alerts: The flagged requests of the forward pass that was stopped.
    """

    def __init__(self, alerts: Sequence[Alert]) -> None:
        self.alerts = tuple(alerts)
        first = self.alerts[0]
        super().__init__(
            f"{len(self.alerts)} request(s) flagged by the jailbreak monitor before generation "
            f"(first: row {first.row}, {first.text[:60]!r}, scores "
            f"{ {k: round(v, 2) for k, v in first.scores.items()} }); refuse or review them"
        )


@dataclass
class Guard:
    """What a live guard has seen; filled in while the ``with`` block runs.

    Attributes:
        monitor: The monitor.
        signal: The signal that raises alerts.
        action: ``flag`` (record and carry on) or ``raise`` (stop the forward pass).
        requests: Prompt passes seen (forward passes whose input ends with the assistant header).
        scores: The scores of each prompt pass, in order.
        alerts: Every flagged request.
    """

    monitor: Monitor
    signal: str
    action: str
    requests: int = 0
    scores: list[MonitorScores] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


@contextmanager
def guard(
    model: LoadedModel, monitor: Monitor, *, signal: str = "alarm", action: str = "flag"
) -> Iterator[Guard]:
    """Watch every forward pass of ``model`` inside the block and flag jailbreak attempts.

    A forward pass is a *request* when every row's input ends with the chat template's
    post-instruction tokens (the prompt pass that yields the first reply token; later generation
    steps are not scored). Its signals are read by hooks in that same pass, so flagging costs no
    extra forward pass and happens before any token is produced. With ``action="raise"`` the pass
    is stopped by :class:`JailbreakAlarm`.

    The guard reads the prompt pass only, so it gates the alarm by the first reply token's
    refusal probability even when the monitor has a reply gate (:attr:`Monitor.reply_gate`, the
    audit's): a reply that opens like a refusal and then complies is caught only by judging the
    streamed reply (:func:`~refusal_probe.monitor.scoring.judge_and_score`).

    Works with :func:`refusal_probe.scoring.generation.generate` and Hugging Face ``generate`` alike, given
    left-padded token ids (not ``inputs_embeds``) and, when padded, the attention mask.

    Example:
        >>> with guard(model, monitor, action="flag") as g:  # doctest: +SKIP
        ...     completions, _ = generate(model, prompts)
        >>> [a.text for a in g.alerts]  # doctest: +SKIP

    Raises:
        MonitorError: The monitor is uncalibrated or fit on another model, or a bad signal or
            action.
    """
    check_signal(signal)
    if action not in ACTIONS:
        raise MonitorError(f"unknown guard action {action!r}; use one of {ACTIONS}")
    monitor.threshold(signal)  # raises if uncalibrated
    check_model(model, monitor)
    state = Guard(monitor, signal, action)
    reader = SignalReader(monitor.readouts)
    n_post, offset, stops = model.chat.n_post, instruction_offset(model), sentence_stops(model)
    tail = model.chat.encode(["x"]).input_ids[0, -n_post:]  # the assistant header
    armed: dict[str, Any] = {"ids": None}

    def see_input(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        reader.raw.clear()
        armed["ids"], reader.enabled = None, False
        if not (isinstance(ids, Tensor) and ids.ndim == 2 and ids.shape[1] > n_post):
            return  # no token ids (inputs_embeds), or too short to hold the assistant header
        if not bool((ids[:, -n_post:] == tail.to(ids.device)).all()):
            return  # a generation step, not a request
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        reader.layout = Layout.from_end(ids, mask, n_post, offset, stops)
        armed["ids"], reader.enabled = ids, True

    def complete() -> None:
        ids = armed["ids"]
        armed["ids"], reader.enabled = None, False
        if ids is None:
            return
        s = monitor.scores(reader.raw)
        state.scores.append(s)
        request = state.requests
        state.requests += 1
        flagged = s.flagged(monitor, signal)
        new = []
        for row in flagged.nonzero().flatten().tolist():
            values = {k: float(s.signal(k)[row]) for k in SIGNALS}
            above = tuple(k for k in SIGNALS if values[k] > monitor.threshold(k))
            text = str(model.tokenizer.decode(ids[row].tolist(), skip_special_tokens=True))
            text = text.strip()
            new.append(Alert(request, row, text, values, above))
        state.alerts.extend(new)
        if new and action == "raise":
            raise JailbreakAlarm(new)

    reader.on_complete = complete
    handle = model.hf_model.register_forward_pre_hook(see_input, with_kwargs=True)
    try:
        with model.bridge.hooks(fwd_hooks=reader.hooks()):
            yield state
    finally:
        handle.remove()
