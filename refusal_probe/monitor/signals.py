"""Readouts of a forward pass: linear ones of the residual stream, and the model's own answer.

Axes: ``prompt`` prompts in input order, ``batch`` rows of one forward pass, ``pos`` token
positions, ``d`` d_model, ``vocab`` vocabulary.

A :class:`Readout` is a direction read at one site over one *span* of each prompt: the
post-instruction tokens (projections averaged), the last instruction token, or every token of the
user's text (the largest projection, or their mean). An :class:`OutputReadout` reads the logits
of the last prompt position, the ones the first reply token is drawn from: the probability that
the reply opens with a refusal. A :class:`SignalReader` turns readouts into hooks that ride along
any forward pass; the :class:`Layout` of the pass says where each row's spans lie (from an
encoded batch, or, for a pass seen live, counted from the end). :func:`read_raw` runs the passes
for a list of prompts. The jailbreak monitor (:mod:`refusal_probe.monitor.fit`) is built on these.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from refusal_probe.activations.prefix import after_prefix, last_positions
from refusal_probe.activations.runner import Hook, StopForward, by_length, forward, keep_last
from refusal_probe.activations.sites import Site, hook_name, logits_hook_name
from refusal_probe.direction.estimators import Direction, check_fits
from refusal_probe.errors import MonitorError
from refusal_probe.model.chat import Encoded
from refusal_probe.model.devices import PerDevice, auto_batch_size
from refusal_probe.model.loading import LoadedModel
from refusal_probe.scoring.refusal import RefusalTokens, refusal_score_from_logits

#: Where a readout is taken: the post-instruction tokens (projections averaged), the last
#: instruction token, every token of the user's text: the largest projection
#: (``instruction``; nothing appended to a request can lower it) or the mean projection
#: (``instruction_mean``; lighter-tailed on harmless text, but appended text dilutes it), or the
#: largest projection over the last token of each sentence of the user's text (``request_max``:
#: a sentence's last token has read the whole sentence, and attention is causal, so text
#: appended after a request can neither lower it nor pull it toward the harmless mean).
SPANS: tuple[str, ...] = (
    "post_instruction",
    "last_instruction",
    "instruction",
    "instruction_mean",
    "request_max",
)
#: Characters that end a sentence (a token whose text ends with one ends a sentence).
SENTENCE_END = ".?!"


@dataclass(frozen=True, eq=False)
class Readout:
    """One linear readout of the residual stream, on the monitor's common scale.

    Attributes:
        name: ``refusal`` or ``harmfulness``.
        direction: The direction read; its ``layer`` and ``site`` say where.
        span: One of :data:`SPANS`.
        loc: Raw readout of the harmless class mean (maps to 0).
        scale: Raw harmful-minus-harmless mean gap (maps to 1); positive.
    """

    name: str
    direction: Direction
    span: str
    loc: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.span not in SPANS:
            raise MonitorError(
                f"readout {self.name!r}: span must be one of {SPANS}, got {self.span!r}"
            )
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise MonitorError(
                f"readout {self.name!r}: harmful prompts do not read above harmless ones "
                f"(gap {self.scale:.3g}) on {self.direction!r}; it cannot serve as a signal"
            )

    def __repr__(self) -> str:
        return f"Readout({self.name} @ {self.site} {self.span}, scale {self.scale:.3g})"

    @property
    def site(self) -> Site:
        """Where the readout is taken."""
        return Site(self.direction.layer, self.direction.site)

    def standardize(self, raw: Tensor) -> Tensor:
        """Raw readouts to the common scale (0: harmless mean, 1: harmful mean), float64."""
        return (raw.double() - self.loc) / self.scale

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "name": self.name,
            "site": str(self.site),
            "span": self.span,
            "loc": self.loc,
            "scale": self.scale,
            "direction": self.direction.to_dict(),
        }


@dataclass(frozen=True, eq=False)
class OutputReadout:
    """The model's own answer: how likely its reply opens with a refusal.

    Read from the next-token logits of the last prompt position, in the forward pass that yields
    the first reply token. The raw value is the refusal log-odds
    (:func:`refusal_probe.scoring.refusal.refusal_score_from_logits`); on the monitor's common scale it is
    the refusal probability ``P_R = sigmoid(log-odds)``: about 0 when the model answers, about 1
    when it refuses. A probability needs no fit, and it saturates: a reply the model will not
    refuse reads about 0 however far below zero its log-odds lie, so an attack that pushes them
    to -6 reads like a harmless prompt at -15, not halfway to a refusal.

    Attributes:
        tokens: The refusal tokens whose probability mass is ``P_R``.
        name: The signal's name.
    """

    tokens: RefusalTokens
    name: str = "output_refusal"

    def __repr__(self) -> str:
        return f"OutputReadout({self.name}: P(first token in {list(self.tokens.tokens)[:4]}...))"

    def standardize(self, raw: Tensor) -> Tensor:
        """Refusal log-odds to the refusal probability, float64."""
        return torch.sigmoid(raw.double())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "name": self.name,
            "site": logits_hook_name(),
            "span": "last",
            "scale": "sigmoid of the refusal log-odds",
            "tokens": self.tokens.to_dict(),
        }


#: Any readout a :class:`SignalReader` takes.
AnyReadout = Readout | OutputReadout

#: Token ids that end a sentence, per tokenizer (computed once per tokenizer).
_STOPS: weakref.WeakKeyDictionary[Any, Tensor] = weakref.WeakKeyDictionary()


def instruction_offset(model: LoadedModel) -> int:
    """Tokens of the chat template before the user's text (from a prompt's first real token).

    The chat format's own count (:attr:`refusal_probe.model.chat.ChatFormat.n_head`): a batch
    shares at most these tokens (:attr:`refusal_probe.model.chat.Encoded.shared`), so a readout
    of the user's text never reads a shared position.
    """
    return model.chat.n_head


def sentence_stops(model: LoadedModel) -> Tensor:
    """Ids of the tokens whose text ends a sentence (ends with one of :data:`SENTENCE_END`)."""
    tok = model.tokenizer
    if tok not in _STOPS:
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        ids = [i for i, t in enumerate(texts) if t.rstrip().endswith(tuple(SENTENCE_END))]
        _STOPS[tok] = torch.tensor(ids, dtype=torch.long)
    return _STOPS[tok]


@dataclass(frozen=True)
class Layout:
    """Where each row's spans lie in one forward pass (left-padded).

    Attributes:
        width: Padded length of the pass.
        lengths: Real (unpadded) length of each row, ``[batch]``.
        last_instruction: Index of each row's last instruction token, ``[batch]``.
        n_post: Length of the post-instruction span.
        offset: Template tokens before the user's text.
        ends: Which positions hold a token that ends a sentence, ``[batch, pos]`` (``None``:
            none known; the ``request_max`` span then reads the last instruction token only).
    """

    width: int
    lengths: Tensor
    last_instruction: Tensor
    n_post: int
    offset: int
    ends: Tensor | None = None

    @classmethod
    def of(cls, batch: Encoded, offset: int, stops: Tensor | None = None) -> Layout:
        """The layout of an encoded batch (``stops``: :func:`sentence_stops`)."""
        return cls(
            batch.seq_len,
            batch.attention_mask.sum(-1),
            batch.last_instruction,
            batch.n_post,
            offset,
            _ends(batch.input_ids, stops),
        )

    @classmethod
    def from_end(
        cls,
        ids: Tensor,
        mask: Tensor | None,
        n_post: int,
        offset: int,
        stops: Tensor | None = None,
    ) -> Layout:
        """The layout of a pass seen live, from its ids ``[batch, pos]`` and attention mask.

        Every row ends with the assistant header, so spans are counted from the end; real
        lengths come from the mask (none: no padding).
        """
        b, width = ids.shape
        lengths = torch.full((b,), width) if mask is None else mask[:, -width:].sum(-1).cpu()
        last = torch.full((b,), width - n_post - 1)
        return cls(width, lengths, last, n_post, offset, _ends(ids, stops))

    def user_text(self, device: torch.device | str = "cpu") -> Tensor:
        """``[batch, pos]``: the positions of each row's user text (left padding counted)."""
        last = self.last_instruction.to(device)
        start = torch.minimum(self.width - self.lengths.to(device) + self.offset, last)
        pos = torch.arange(self.width, device=device)[None, :]
        return (pos >= start[:, None]) & (pos <= last[:, None])

    def request_ends(self, text: Tensor | None = None) -> Tensor:
        """``[batch, pos]``: the tokens the ``request_max`` span reads.

        The sentence ends of the user's text (``text``: :meth:`user_text`, computed here when
        not given; the result is on its device), and its last token.
        """
        text = self.user_text() if text is None else text
        dev = text.device
        last = self.last_instruction.to(dev)
        at = torch.arange(self.width, device=dev)[None, :] == last[:, None]
        if self.ends is not None:
            at = at | self.ends.to(dev)
        return text & at


def _ends(ids: Tensor, stops: Tensor | None) -> Tensor | None:
    """``[batch, pos]``: the positions of ``ids`` that hold a sentence-ending token."""
    return None if stops is None else torch.isin(ids.cpu(), stops)


class SignalReader:
    """Hooks that read each readout's span at its site during a forward pass.

    Set :attr:`layout` before each pass; :attr:`raw` then holds the pass's raw readouts by name;
    ``on_complete`` (if set) is called once every readout is read, and with ``stop`` the pass
    then ends (run it with ``forward(..., stoppable=True)``); ``enabled = False`` makes the hooks
    do nothing.
    """

    def __init__(self, readouts: Sequence[AnyReadout], stop: bool = False) -> None:
        self.readouts, self.stop = tuple(readouts), stop
        self.layout: Layout | None = None
        self.raw: dict[str, Tensor] = {}
        self.units = {
            r.name: PerDevice(r.direction.unit.float())
            for r in self.readouts
            if isinstance(r, Readout)
        }
        self.on_complete: Any = None
        self.enabled = True

    def hooks(self) -> list[Hook]:
        """One hook per readout, at its site (the output logits for an :class:`OutputReadout`)."""
        return [
            (hook_name(r.site), after_prefix(partial(self._read, readout=r)))
            if isinstance(r, Readout)
            else (logits_hook_name(), last_positions(partial(self._read_logits, readout=r)))
            for r in self.readouts
        ]

    def _read(self, act: Tensor, hook: Any, *, readout: Readout) -> None:
        # act: [batch, pos, d]
        if not self.enabled or self.layout is None:
            return
        self._store(readout.name, _span(act, self.units[readout.name], readout.span, self.layout))

    def _read_logits(self, logits: Tensor, hook: Any, *, readout: OutputReadout) -> None:
        # logits: [batch, pos, vocab]; left padding puts every row's next token at -1
        if not self.enabled or self.layout is None:
            return
        self._store(readout.name, refusal_score_from_logits(logits[:, -1], readout.tokens).cpu())

    def _store(self, name: str, values: Tensor) -> None:
        self.raw[name] = values
        if len(self.raw) == len(self.readouts):
            if self.on_complete is not None:
                self.on_complete()
            if self.stop:
                raise StopForward


def _span(act: Tensor, unit: PerDevice, span: str, lay: Layout) -> Tensor:
    """One readout per row: ``act [batch, pos, d]`` projected on ``unit``, reduced over the span.

    The projection runs on the activation's device in float32; the float64 reduction runs on the
    CPU (some accelerators have no float64), after one small copy of ``[batch]`` or
    ``[batch, n_post]`` values.
    """
    dev = act.device
    u = unit.on(dev)  # float32 [d]
    if span == "post_instruction":
        proj = act[:, lay.width - lay.n_post :].float() @ u  # [batch, n_post]
        return proj.cpu().double().mean(-1)
    last = lay.last_instruction.to(dev)
    if span == "last_instruction":
        rows = torch.arange(act.shape[0], device=dev)
        return (act[rows, last].float() @ u).cpu().double()
    proj = act.float() @ u  # [batch, pos]
    inside = lay.user_text(dev)  # [batch, pos]
    if span == "instruction_mean":
        kept = proj.masked_fill(~inside, 0.0).cpu().double()  # [batch, pos]
        return kept.sum(-1) / inside.sum(-1).cpu().double()
    if span == "request_max":  # the last token of each sentence, and of the user's text
        inside = lay.request_ends(inside)
    return proj.masked_fill(~inside, float("-inf")).amax(-1).cpu().double()


def read_raw(
    model: LoadedModel,
    readouts: Sequence[AnyReadout],
    prompts: Sequence[str],
    *,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """Raw readouts (before standardizing) of each prompt, in input order: ``{name: [prompt]}``.

    One forward pass per batch, ended once every readout is read (with an
    :class:`OutputReadout`, at the logits of the last position only). ``batch_size=None``
    chooses the batch from free memory (:func:`refusal_probe.model.devices.auto_batch_size`).
    """
    if not prompts:
        raise MonitorError("no prompts to score; pass at least one prompt")
    for r in readouts:
        if isinstance(r, Readout):
            check_fits(model, r.direction)
    # The last position's logits at most (the passes end at the last readout): the unembedding
    # of every position is skipped, and a batch's shared template tokens run once.
    kw = keep_last(model)
    offset, stops = instruction_offset(model), sentence_stops(model)
    out = {r.name: torch.empty(len(prompts), dtype=torch.float64) for r in readouts}
    with torch.no_grad():
        size = auto_batch_size(model, prompts, batch_size)
        for rows in by_length([len(p) for p in prompts], size):
            batch = model.chat.encode([prompts[i] for i in rows])
            reader = SignalReader(readouts, stop=True)
            reader.layout = Layout.of(batch, offset, stops)
            forward(model, batch, reader.hooks(), stoppable=True, **kw)
            idx = torch.tensor(list(rows))
            for name, values in reader.raw.items():
                out[name][idx] = values
    return out
