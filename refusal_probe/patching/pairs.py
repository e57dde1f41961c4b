"""Matched prompt pairs for patching, encoded once, and the refusal metric they are scored with.

Axes: ``pair`` matched pairs, ``pos`` token positions of the left-padded batch, ``vocab``.

The *clean* prompt of a pair is the harmful one (the model refuses), the *corrupted* prompt its
harmless twin built from the same template. Patching compares activations position by position, so
the two prompts of a pair must have exactly the same number of tokens; both sides of all pairs are
encoded in one call so they share one padded width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.sites import Positions
from refusal_probe.errors import PatchingError
from refusal_probe.model.chat import Encoded
from refusal_probe.model.loading import LoadedModel
from refusal_probe.prompts.sets import Pair
from refusal_probe.scoring.refusal import RefusalTokens, refusal_score_from_logits, refusal_tokens

#: A metric maps last-position logits ``[batch, vocab]`` to one number per row ``[batch]``; it
#: must be differentiable for attribution patching.
Metric = Callable[[Float[Tensor, "batch vocab"]], Float[Tensor, " batch"]]

PairLike = Union[Pair, tuple[str, str]]

_HOW_TO_MATCH = (
    "Activation patching compares the two prompts of a pair position by position, so they need the "
    "same number of tokens: build both from one template and choose fillers of equal token length "
    "(check with model.chat.encode([harmful, harmless]).attention_mask.sum(-1)), as the shipped "
    "fixtures/prompts/pairs.jsonl are built (load them with "
    "refusal_probe.prompts.sets.load_fixtures().pairs)"
)


@dataclass(frozen=True)
class PairBatch:
    """Both sides of a list of matched pairs, encoded into one padded width.

    Attributes:
        ids: Pair ids, in order.
        clean: The harmful prompts, ``[pair, pos]``.
        corrupted: The harmless prompts, same shape and padding as ``clean``.
    """

    ids: tuple[str, ...]
    clean: Encoded
    corrupted: Encoded

    @property
    def n(self) -> int:
        """Number of pairs."""
        return len(self.ids)

    @property
    def width(self) -> int:
        """Padded length of the batch."""
        return self.clean.seq_len

    @property
    def min_length(self) -> int:
        """Real (unpadded) length of the shortest prompt."""
        return int(self.clean.attention_mask.sum(-1).min())

    def subset(self, rows: Sequence[int]) -> PairBatch:
        """The pairs at ``rows``, with padding columns no row needs removed."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        keep = int(self.clean.attention_mask[idx].sum(-1).max())
        cut = self.width - keep
        return PairBatch(
            tuple(self.ids[i] for i in rows),
            _rows(self.clean, idx, cut),
            _rows(self.corrupted, idx, cut),
        )

    def first_difference(self) -> int:
        """The earliest offset (from the end) at which any pair's two prompts differ."""
        diff = (self.clean.input_ids != self.corrupted.input_ids).any(0)  # [pos]
        if not bool(diff.any()):
            return -1
        return int(diff.nonzero()[0]) - self.width


def encode_pairs(model: LoadedModel, pairs: Sequence[PairLike]) -> PairBatch:
    """Encode matched pairs (``Pair`` records or ``(harmful, harmless)`` tuples).

    Raises:
        PatchingError: No pairs, or some pair's prompts differ in token length (the message lists
            them and says how to build matched pairs).
    """
    if not pairs:
        raise PatchingError("no prompt pairs to patch; pass matched (harmful, harmless) pairs")
    ids, clean, corrupted = [], [], []
    for i, p in enumerate(pairs):
        if isinstance(p, Pair):
            ids.append(p.id)
            clean.append(p.harmful)
            corrupted.append(p.harmless)
        else:
            try:
                a, b = p
            except (TypeError, ValueError):
                raise PatchingError(
                    f"pair {i} is {p!r}; pass Pair records or (harmful, harmless) tuples"
                ) from None
            ids.append(str(i))
            clean.append(a)
            corrupted.append(b)
    enc = model.chat.encode(clean + corrupted)
    n = len(ids)
    lengths = enc.attention_mask.sum(-1)
    bad = [
        (ids[i], int(lengths[i]), int(lengths[n + i]))
        for i in range(n)
        if lengths[i] != lengths[n + i]
    ]
    if bad:
        listed = "; ".join(
            f"pair {pid!r}: harmful {a} tokens, harmless {b}" for pid, a, b in bad[:5]
        )
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise PatchingError(
            f"{len(bad)} of {n} pairs are not matched in length: {listed}{more}. {_HOW_TO_MATCH}"
        )
    return PairBatch(tuple(ids), _rows(enc, torch.arange(n)), _rows(enc, torch.arange(n, 2 * n)))


def _rows(enc: Encoded, rows: Tensor, cut: int = 0) -> Encoded:
    """Rows of an encoded batch, dropping its first ``cut`` (all-padding) columns."""
    return Encoded(
        enc.input_ids[rows, cut:],
        enc.attention_mask[rows, cut:],
        enc.position_ids[rows, cut:],
        enc.last_instruction[rows] - cut,
        enc.n_post,
        enc.shared,
    )


def offsets_for(batch: PairBatch, positions: Positions | None, grid: str) -> tuple[int, ...]:
    """Position offsets (negative, from the end) to patch.

    ``None`` means the post-instruction span for head and MLP grids, and for the residual grid
    every position from the first token where some pair differs (earlier positions carry identical
    activations in both runs, so their effect is zero by construction).
    """
    n_post = batch.clean.n_post
    if positions is None:
        if grid == "resid":
            start = max(batch.first_difference(), -batch.min_length)
            return tuple(range(min(start, -n_post), 0))
        return tuple(range(-n_post, 0))
    if positions.kind == "post_instruction":
        offs: tuple[int, ...] = tuple(range(-n_post, 0))
    elif positions.kind == "last":
        offs = (-1,)
    elif positions.kind == "last_instruction":
        rel = batch.clean.last_instruction - batch.width  # [pair]
        if bool((rel != rel[0]).any()):
            raise PatchingError(
                "the last instruction token is not at the same offset in every prompt; "
                "pass explicit offsets instead"
            )
        offs = (int(rel[0]),)
    else:
        offs = tuple(sorted(set(positions.offsets)))
    if min(offs) < -batch.min_length:
        raise PatchingError(
            f"offset {min(offs)} reaches before the start of the shortest prompt "
            f"({batch.min_length} tokens)"
        )
    return offs


def default_metric(model: LoadedModel) -> Metric:
    """The refusal log-odds at the last position, with this tokenizer's refusal tokens."""
    return RefusalLogOdds(refusal_tokens(model.tokenizer))


@dataclass(frozen=True)
class RefusalLogOdds:
    """The refusal metric: ``log P_R - log(1 - P_R)`` of last-position logits (float64).

    Attributes:
        tokens: The refusal tokens (:class:`refusal_probe.scoring.refusal.RefusalTokens`).
    """

    tokens: RefusalTokens

    def __call__(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
        """Score each row of ``logits``."""
        return refusal_score_from_logits(logits, self.tokens)

    def __repr__(self) -> str:
        return f"refusal_log_odds({len(self.tokens.ids)} tokens)"


def metric_name(metric: Metric) -> str:
    """A readable name of a metric, for reports."""
    return (
        repr(metric)
        if isinstance(metric, RefusalLogOdds)
        else getattr(metric, "__name__", type(metric).__name__)
    )


def check_metric(values: Tensor, rows: int) -> Tensor:
    """Validate a metric's output (``[rows]``, finite) and return it as float64."""
    if values.shape != (rows,):
        raise PatchingError(
            f"the metric returned shape {tuple(values.shape)}; it must map last-position "
            f"logits [batch, vocab] to one value per row [batch] (here {rows})"
        )
    if not bool(torch.isfinite(values).all()):
        raise PatchingError(
            "the metric returned NaN or infinite values; with the refusal log-odds this means the "
            "refusal tokens hold all or none of the probability mass: check them "
            "(refusal_probe.scoring.refusal.refusal_tokens) and the chat template"
        )
    return values.double()


def as_float64(x: Tensor) -> Tensor:
    """Detach, move to the CPU and widen to float64."""
    return x.detach().to("cpu", torch.float64)
