"""The tokens every row of a batch starts with, run once for the whole batch.

Axes: ``batch`` rows, ``pos`` positions of the left-padded batch, ``shared`` the shared tokens.

Every prompt of a chat model opens with the same template tokens (the system prompt and the user
header): 24 of the 43 tokens of a grammar-set prompt on SmolLM2. :func:`plan` says how many of a
batch's leading tokens (:attr:`refusal_probe.model.chat.Encoded.shared`) one forward pass may run
once, with a batch of one, before it repeats their KV cache for every row and runs the rest of
each row on it (:func:`refusal_probe.activations.runner.forward`). Attention, positions and
padding work out the same: each row's remaining tokens keep their position ids, and the rows'
padding moves from before the shared tokens to after them, still masked.

A hook must say what it does with positions, or its pass runs the batch whole:

* :func:`same_everywhere`: it changes every position of every row alike (ablating or adding one
  vector). It runs on the shared tokens' pass too.
* :func:`after_prefix`: it reads or changes positions after the shared tokens only, indexed in the
  batch's own layout. In the rest's pass it sees the activation left-padded back to the batch's
  width (the shared positions hold zeros), so the indices it was built with still hold.
* :func:`last_positions`: it reads the last positions only, counted from the end (the output
  logits of the last position). It sees the rest's activation as it is.
* :func:`by_row`: it changes every position of row ``i`` by ``values[i]`` (a different direction
  ablated in each row, to score many candidates in one pass). The shared tokens then run once
  per distinct row of ``values`` rather than once for the batch (:func:`groups`).

A pass shares only when it asks for the last ``logits_to_keep`` positions' logits (every
row's own tokens), starts from an empty KV cache and returns none (the patching engine's base run
keeps its cache in the batch's own layout). :func:`sharing` turns it off for a block, and
``REFUSAL_PROBE_SHARE_PREFIX=0`` in the environment for a whole run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from torch import Tensor

from refusal_probe.model.chat import Encoded

if TYPE_CHECKING:
    from refusal_probe.model.loading import LoadedModel

#: What a hook does with the shared tokens' positions.
Role = Literal["same", "after", "last", "rows"]
F = TypeVar("F", bound=Callable[..., Any])
Hook = tuple[str, Callable[..., Any]]

_ATTR = "shared_prefix_role"
_ENABLED: ContextVar[bool] = ContextVar(
    "refusal_probe_share_prefix", default=os.environ.get("REFUSAL_PROBE_SHARE_PREFIX", "1") != "0"
)


def same_everywhere(fn: F) -> F:
    """Mark ``fn`` as a hook that changes every position of every row alike."""
    setattr(fn, _ATTR, "same")
    return fn


def after_prefix(fn: F) -> F:
    """Mark ``fn`` as a hook that reads or changes only positions after the shared tokens."""
    setattr(fn, _ATTR, "after")
    return fn


def last_positions(fn: F) -> F:
    """Mark ``fn`` as a hook that reads only the last positions, counted from the end."""
    setattr(fn, _ATTR, "last")
    return fn


def by_row(fn: F, values: Tensor, make: Callable[[Tensor], Callable[..., Any]]) -> F:
    """Mark ``fn`` as a hook that changes every position of row ``i`` by ``values[i]``.

    ``make(values[index])`` must give the same hook for the rows ``index`` alone.
    """
    setattr(fn, _ATTR, "rows")
    fn._prefix_rows = (values, make)  # type: ignore[attr-defined]
    return fn


def clear_of_shared(batch: Encoded, first: int) -> bool:
    """Whether the batch's columns from ``first`` on lie after every row's shared tokens.

    A hook that reads or writes only those columns may be marked :func:`after_prefix`.
    """
    start = batch.seq_len - batch.attention_mask.sum(-1) + batch.shared  # [batch]
    return first >= int(start.max())


def after_from(hooks: list[Hook], batch: Encoded, first: int) -> list[Hook]:
    """``hooks`` marked :func:`after_prefix` when columns ``first`` on clear every shared token.

    For hooks that read or write only the batch's columns from ``first`` on; otherwise they are
    returned as they are (unmarked: the pass runs the batch whole). Each is marked on a copy.
    """
    if not clear_of_shared(batch, first):
        return hooks
    return [(name, after_prefix(partial(fn))) for name, fn in hooks]


def groups(hooks: Sequence[Callable[..., Any]], n: int) -> tuple[Tensor, Tensor]:
    """Rows that :func:`by_row` ``hooks`` treat alike: each row's group ``[n]``, one row of each.

    Rows whose values are equal in every hook share the shared tokens' pass; with no such hooks
    all ``n`` rows are one group.
    """
    if not hooks:
        return torch.zeros(n, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    key = torch.cat([fn._prefix_rows[0].reshape(n, -1).float().cpu() for fn in hooks], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(n), "amin")
    return inverse, first


def take(fn: Callable[..., Any], rows: Tensor) -> Callable[..., Any]:
    """The :func:`by_row` hook ``fn`` for the rows ``rows`` alone."""
    values, make = fn._prefix_rows  # type: ignore[attr-defined]
    return make(values[rows.to(values.device)])


def role(fn: Callable[..., Any]) -> Role | None:
    """What ``fn`` does with the shared positions (``None``: unknown, so no sharing)."""
    return getattr(fn, _ATTR, None)


@contextmanager
def sharing(enabled: bool) -> Iterator[None]:
    """Let the passes inside share their batches' leading tokens, or not (the default: let)."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def plan(
    model: LoadedModel,
    batch: Encoded,
    hooks: Sequence[tuple[str, Callable[..., Any]]],
    *,
    grows: int = 0,
    **kwargs: Any,
) -> int:
    """How many leading tokens a pass over ``batch`` with ``hooks`` runs once; 0: none.

    ``kwargs`` are the pass's model arguments: it must keep ``logits_to_keep`` positions, no
    more than the shortest row has after the shared tokens, and any ``past_key_values`` must be
    empty. ``grows``: tokens a decoding loop will add to the cache. A model with sliding-window
    attention shares only while the whole cache fits its window: the window counts cache slots,
    and sharing moves each row's padding between its tokens.
    """
    shared = batch.shared
    if shared < 1 or not _ENABLED.get():
        return 0
    if any(role(fn) is None for _, fn in hooks):
        return 0
    if kwargs.get("return_type", "logits") != "logits":
        return 0  # the caller wants the pass's KV cache, in the batch's own layout
    keep = kwargs.get("logits_to_keep")
    if not isinstance(keep, int) or keep < 1:
        return 0
    if keep > int(batch.attention_mask.sum(-1).min()) - shared:
        return 0
    cache = kwargs.get("past_key_values")
    if cache is not None and cache.get_seq_length() > 0:
        return 0
    window = sliding_window(model)
    if window is not None and batch.seq_len + grows > window:
        return 0
    return shared


def sliding_window(model: LoadedModel) -> int | None:
    """The model's attention window if any of its layers has one, else ``None``."""
    config = model.hf_model.config
    types = getattr(config, "layer_types", None)
    if types is not None and not any("sliding" in str(t) for t in types):
        return None
    window = getattr(config, "sliding_window", None)
    return int(window) if window else None


def head(batch: Encoded, shared: int) -> Tensor:
    """``[1, shared]``: the shared tokens (read off the first row, after its padding)."""
    start = batch.seq_len - int(batch.attention_mask[0].sum())
    return batch.input_ids[:1, start : start + shared]


def rest_mask(batch: Encoded, shared: int) -> Tensor:
    """``[batch, pos]``: the attention mask over the shared tokens' cache and each row's rest.

    A row's rest (its tokens after the shared ones) is the batch's own row less ``shared``
    leading positions, so its padding now follows the shared tokens.
    """
    ones = torch.ones_like(batch.attention_mask[:, :shared])
    return torch.cat([ones, batch.attention_mask[:, : batch.seq_len - shared]], dim=1)


def padded(fn: Callable[..., Any], shared: int) -> Callable[..., Any]:
    """``fn`` seeing the rest's activations left-padded back to the batch's width."""

    def run(act: Tensor, hook: Any) -> Tensor | None:
        pad = act.new_zeros((act.shape[0], shared, *act.shape[2:]))
        out = fn(torch.cat([pad, act], dim=1), hook)
        # the rest's part, laid out afresh: a later view() (GPT-2's heads) needs it contiguous
        return None if out is None else out[:, shared:].contiguous()

    return run
