"""Forward passes over encoded batches, with scoped hooks.

Every forward in the package goes through :func:`forward`, so the attention mask and position ids
are always passed (a left-padded batch without them gives wrong activations), and every hook is
removed when the call returns, whatever happens inside it. It is also where work is counted:
inside :func:`counting`, each pass adds to a :class:`Work` tally (passes, token positions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.model.chat import Encoded
from refusal_probe.model.loading import LoadedModel

Hook = tuple[str, Callable[..., Any]]


class StopForward(Exception):
    """Raised by a hook to end a forward pass once everything needed has been read."""


@dataclass
class Work:
    """Forward passes run and token positions they processed (padding and batch rows included).

    A decoding step with a KV cache counts its new positions only.
    """

    passes: int = 0
    tokens: int = 0


_WORK: ContextVar[Work | None] = ContextVar("refusal_probe_work", default=None)


@contextmanager
def counting(work: Work) -> Iterator[Work]:
    """Add every forward pass run inside the block to ``work``."""
    token = _WORK.set(work)
    try:
        yield work
    finally:
        _WORK.reset(token)


def forward(
    model: LoadedModel,
    batch: Encoded,
    hooks: Sequence[Hook] = (),
    *,
    stoppable: bool = False,
    **model_kwargs: Any,
) -> Float[Tensor, "batch pos vocab"] | None:
    """Run the model on a batch with ``hooks`` installed for this call only.

    Args:
        model: The loaded model.
        batch: An encoded, left-padded batch (moved to the model's device here).
        hooks: ``(hook_name, fn)`` pairs; ``fn(activation, hook)`` may return a replacement.
        stoppable: If true, a hook may raise :class:`StopForward` to end the pass early; the
            function then returns ``None``.
        **model_kwargs: Passed on to the bridge's forward (for example ``logits_to_keep=1``, or
            ``past_key_values`` with a batch holding only the tokens after the cached prefix: the
            mask then spans prefix and new tokens, ``input_ids``/``position_ids`` the new ones).

    Returns:
        Logits ``[batch, pos, vocab]``, or ``None`` when stopped early.
    """
    batch = batch.to(model.device)
    work = _WORK.get()
    if work is not None:
        work.passes += 1
        work.tokens += int(batch.input_ids.numel())
    try:
        with model.bridge.hooks(fwd_hooks=list(hooks)):
            return model.bridge.forward(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                **model_kwargs,
            )
    except StopForward:
        if not stoppable:
            raise
        return None


def last_logits(
    model: LoadedModel, batch: Encoded, hooks: Sequence[Hook] = ()
) -> Float[Tensor, "batch vocab"]:
    """Logits of the next token after each prompt (left padding puts it at ``-1``)."""
    logits = forward(model, batch, hooks)
    assert logits is not None  # not stoppable: forward returns logits or raises
    return logits[:, -1, :]


def batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Split ``items`` into consecutive chunks of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def no_grad_forward(model: LoadedModel, batch: Encoded, hooks: Sequence[Hook] = ()) -> Tensor:
    """:func:`forward` under ``torch.no_grad`` returning full logits."""
    out = forward(model, batch, hooks)
    assert out is not None
    return out


def _alias_cache(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs["past_key_values"] = kwargs["cache"]
    return args, kwargs


@contextmanager
def kv_cache_alias(model: LoadedModel) -> Iterator[None]:
    """Let the bridge's attention see a KV cache for the duration of the block.

    Hugging Face 5.x hands attention its cache as ``cache=``, while TransformerLens's attention
    bridges read ``past_key_values``; without this the cache stays empty and a cached step attends
    to itself alone. The pre-hooks are removed on exit, whatever happens inside.
    """
    handles = []
    try:
        for block in model.bridge.blocks:
            attn = getattr(block, "attn", None)
            if attn is not None:
                handles.append(attn.register_forward_pre_hook(_alias_cache, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
