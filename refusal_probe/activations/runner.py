"""Forward passes over encoded batches, with scoped hooks.

Every forward in the package goes through :func:`forward`, so the attention mask and position ids
are always passed (a left-padded batch without them gives wrong activations), and every hook is
removed when the call returns, whatever happens inside it. It is also where work is counted:
inside :func:`counting`, each pass adds to a :class:`Work` tally (passes, token positions). And
it is where a batch's shared leading tokens (a chat template's system prompt) run once for the
whole batch, where its hooks allow (:mod:`refusal_probe.activations.prefix`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations import prefix
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
        hooks: ``(hook_name, fn)`` pairs; ``fn(activation, hook)`` may return a replacement. Where
            every hook says what it does with positions and the pass keeps only the last
            ``logits_to_keep`` positions' logits, the batch's shared leading tokens run once
            (:mod:`refusal_probe.activations.prefix`); the logits are the same.
        stoppable: If true, a hook may raise :class:`StopForward` to end the pass early; the
            function then returns ``None``.
        **model_kwargs: Passed on to the bridge's forward (for example ``logits_to_keep=1``, or
            ``past_key_values`` with a batch holding only the tokens after the cached prefix: the
            mask then spans prefix and new tokens, ``input_ids``/``position_ids`` the new ones).

    Returns:
        Logits ``[batch, pos, vocab]``, or ``None`` when stopped early.
    """
    batch = batch.to(model.device)
    shared = prefix.plan(model, batch, hooks, **model_kwargs)
    work = _WORK.get()
    if work is not None:
        work.passes += 1
    try:
        if shared:
            logits = _forward_shared(model, batch, hooks, shared, model_kwargs)
            if logits is not None:
                return logits
        _count_tokens(batch.input_ids)
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


def _forward_shared(
    model: LoadedModel,
    batch: Encoded,
    hooks: Sequence[Hook],
    shared: int,
    model_kwargs: dict[str, Any],
) -> Tensor | None:
    """The pass with the first ``shared`` tokens run once; ``None`` if the model kept no cache.

    The shared tokens run as a batch of one (one per group of rows that row-wise hooks treat
    alike) with the hooks that act on every position; their KV cache (the caller's own
    ``past_key_values``, when given, so a decoding loop goes on from it) is repeated for every
    row, and each row's rest runs on it with every hook.
    """
    from transformers import DynamicCache

    kwargs = {k: v for k, v in model_kwargs.items() if k not in ("past_key_values", "use_cache")}
    cache = model_kwargs.get("past_key_values")
    cache = DynamicCache() if cache is None else cache
    # Rows that row-wise hooks treat alike share one run of the shared tokens.
    rowwise = {id(fn): fn for _, fn in hooks if prefix.role(fn) == "rows"}
    group, first = prefix.groups(list(rowwise.values()), batch.input_ids.shape[0])
    remade = {key: prefix.take(fn, first) for key, fn in rowwise.items()}
    head = prefix.head(batch, shared).expand(len(first), -1)
    once = [
        (name, remade.get(id(fn), fn)) for name, fn in hooks if prefix.role(fn) in ("same", "rows")
    ]
    rest = [
        (name, prefix.padded(fn, shared) if prefix.role(fn) == "after" else fn)
        for name, fn in hooks
    ]
    with kv_cache_alias(model), warnings.catch_warnings():
        # Hugging Face 5.x renamed the argument to ``cache``; the bridge passes the old name.
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        _count_tokens(head)
        with model.bridge.hooks(fwd_hooks=once):
            model.bridge.forward(
                head,
                attention_mask=torch.ones_like(head),
                position_ids=torch.arange(shared, device=head.device)[None, :].expand_as(head),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        if cache.get_seq_length() != shared:  # an architecture whose bridge ignores the cache
            return None
        cache.batch_select_indices(group.to(head.device))
        _count_tokens(batch.input_ids[:, shared:])
        with model.bridge.hooks(fwd_hooks=rest):
            return model.bridge.forward(
                batch.input_ids[:, shared:],
                attention_mask=prefix.rest_mask(batch, shared),
                position_ids=batch.position_ids[:, shared:],
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )


def _count_tokens(ids: Tensor) -> None:
    """Add the positions of ``ids`` (``[batch, pos]``, padding included) to the tally, if any."""
    work = _WORK.get()
    if work is not None:
        work.tokens += int(ids.numel())


def keep_last(model: LoadedModel) -> dict[str, Any]:
    """``forward``'s arguments to unembed the last position only, where the model allows it.

    For passes that read activations and end early: the unembedding of every other position is
    skipped if one completes, and the batch's shared leading tokens may run once.
    """
    params = inspect.signature(model.hf_model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def last_logits(
    model: LoadedModel, batch: Encoded, hooks: Sequence[Hook] = ()
) -> Float[Tensor, "batch vocab"]:
    """Logits of the next token after each prompt (left padding puts it at ``-1``)."""
    logits = forward(model, batch, hooks)
    assert logits is not None  # not stoppable: forward returns logits or raises
    return logits[:, -1, :]


def by_length(lengths: Sequence[int], size: int, spread: float = 2.0) -> list[list[int]]:
    """Indices of items of these ``lengths`` in batches: shortest first, similar lengths together.

    A batch holds at most ``size`` items, none longer than ``spread`` times its shortest, so
    padding never takes more than ``1 - 1/spread`` of a batch: a natural-language set's long tail
    no longer pads 64-row batches out to its longest prompt (three-quarters of the positions were
    padding). ``size`` is what fits the longest item in memory, so every batch still fits.
    Generation takes a wider spread: each decoding step costs a batch about the same whatever
    its rows, so fewer, fuller batches pay for some padding (``benchmarks/shared_prefix.md``).
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if out and len(out[-1]) < size and lengths[i] <= spread * max(lengths[out[-1][0]], 1):
            out[-1].append(i)
        else:
            out.append([i])
    return out


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
