"""Activation capture: prompts × sites × positions → one float tensor, optionally cached on disk.

Axes: ``prompt`` (input order), ``site`` (the requested sites, in order), ``pos`` (the requested
positions of each prompt), ``head`` (per-head sites only), ``d`` (d_model).

Only the requested slices are kept: each hook gathers its positions and copies them into a
preallocated result, so memory is ``prompts × sites × positions × d`` floats whatever the model
size. The forward pass ends right after the deepest requested site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe import progress as progress_
from refusal_probe.activations.cache import TensorCache, cache_key, cached
from refusal_probe.activations.prefix import after_prefix
from refusal_probe.activations.runner import StopForward, by_length, forward, keep_last
from refusal_probe.activations.sites import POST_INSTRUCTION, SITE_KINDS, Positions, Site, hook_name
from refusal_probe.errors import CaptureError
from refusal_probe.model.devices import PerDevice, auto_batch_size
from refusal_probe.model.loading import LoadedModel

# Order of sites inside one block, so the pass can stop after the deepest one.
_ORDER_IN_BLOCK = {
    "resid_pre": 0,
    "head_out": 1,
    "attn_out": 2,
    "resid_mid": 3,
    "mlp_out": 4,
    "resid_post": 5,
}


@dataclass(frozen=True)
class Activations:
    """Captured activations and what they are.

    Attributes:
        values: ``[prompt, site, pos, d]``, or ``[prompt, site, pos, head, d]`` for per-head
            sites; float32 on the CPU.
        sites: The sites, in the order of the ``site`` axis.
        positions: The positions that were read.
        prompts_sha256: Fingerprint of the prompt texts, in order.
        model_fingerprint: The model's identity fingerprint.
    """

    values: Tensor
    sites: tuple[Site, ...]
    positions: Positions
    prompts_sha256: str
    model_fingerprint: str

    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return int(self.values.shape[0])

    def at(self, site: Site) -> Tensor:
        """Values at one site: ``[prompt, pos, d]`` (or with the head axis)."""
        try:
            return self.values[:, self.sites.index(site)]
        except ValueError:
            captured = [str(s) for s in self.sites]
            raise CaptureError(f"{site} was not captured; captured: {captured}") from None

    def mean(self) -> Float[Tensor, "site pos d"]:
        """Mean over prompts, accumulated in float64."""
        return self.values.double().mean(0)


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """SHA-256 over the prompt texts, in order."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def capture(
    model: LoadedModel,
    prompts: Sequence[str],
    sites: Sequence[Site],
    positions: Positions = POST_INSTRUCTION,
    *,
    batch_size: int | None = None,
    cache: TensorCache | None = None,
    progress: bool = True,
) -> Activations:
    """Read activations at ``sites`` × ``positions`` for every prompt.

    Args:
        model: The loaded model.
        prompts: User instructions (the chat template is applied here).
        sites: Where to read; per-head sites (``head_out``) cannot be mixed with others.
        positions: Which positions of each prompt; default the post-instruction span.
        batch_size: Prompts per forward pass (prompts are grouped by length to limit padding);
            ``None`` chooses it from free memory (:func:`refusal_probe.model.devices.auto_batch_size`).
        cache: A disk cache; on a hit the model is not run at all.
        progress: Report the prompts done to :mod:`refusal_probe.progress` (silent unless a
            front end listens).

    Returns:
        The activations, float32 on the CPU.

    Raises:
        CaptureError: Empty prompts or sites, a layer out of range, or mixed per-head sites.
    """
    sites = tuple(sites)
    _validate(model, prompts, sites)
    key = _key(model, prompts, sites, positions)
    stored, _ = cached(
        cache,
        key,
        lambda: _Values(_run(model, list(prompts), sites, positions, batch_size, progress)),
        _Values,
    )
    return _wrap(stored.values, model, prompts, sites, positions)


@dataclass(frozen=True)
class _Values:
    """What the cache keeps of a capture: the values (the rest is in the key)."""

    values: Tensor


def _wrap(
    values: Tensor,
    model: LoadedModel,
    prompts: Sequence[str],
    sites: tuple[Site, ...],
    positions: Positions,
) -> Activations:
    fingerprint = prompts_fingerprint(prompts)
    return Activations(values, sites, positions, fingerprint, model.identity.fingerprint)


def _validate(model: LoadedModel, prompts: Sequence[str], sites: tuple[Site, ...]) -> None:
    if not prompts:
        raise CaptureError("no prompts to capture; pass at least one prompt")
    if not sites:
        raise CaptureError("no sites to capture; pass at least one Site")
    bad = [s for s in sites if s.layer >= model.n_layers]
    if bad:
        raise CaptureError(
            f"sites {[str(s) for s in bad]} are beyond the model's {model.n_layers} layers"
        )
    heads = {s.per_head for s in sites}
    if len(heads) > 1:
        raise CaptureError(
            "per-head sites (head_out) have an extra axis; capture them in a separate call"
        )
    if len(set(sites)) != len(sites):
        raise CaptureError("duplicate sites requested")
    absent = [s for s in sites if hook_name(s) not in model.hook_names]
    if absent:
        kinds = sorted({s.kind for s in absent})
        offered = sorted(k for k in SITE_KINDS if hook_name(Site(0, k)) in model.hook_names)
        why = (
            "; its blocks run attention and MLP in parallel, so there is no resid_mid"
            if kinds == ["resid_mid"]
            else ""
        )
        raise CaptureError(
            f"{model.identity.architecture} has no {', '.join(kinds)} site{why}; "
            f"use one of {offered}"
        )


def _key(
    model: LoadedModel, prompts: Sequence[str], sites: tuple[Site, ...], positions: Positions
) -> dict[str, Any]:
    return cache_key(
        model.key,
        "activations",
        prompts=prompts_fingerprint(prompts),
        sites=[str(s) for s in sites],
        positions=str(positions),
    )


class _Reader:
    """The hooks of one batch: each copies its site's requested positions into ``buf``.

    ``buf`` (``[batch, site, pos, ...]``, float32) lives on the model's input device, so a batch
    costs one device-to-host copy (:meth:`rows_on_cpu`), not one per site; a site on another
    device (a model split over GPUs) is moved to it, and the positions to read are moved to each
    site's device once.
    """

    def __init__(self, buf: Tensor, index: Tensor, w_o: dict[int, Tensor], deepest: Site) -> None:
        self.buf, self.w_o, self.deepest = buf, w_o, deepest
        self.index = PerDevice(index)
        self.filled: set[int] = set()

    def hook(self, j: int, site: Site) -> Any:
        """The hook function for the ``j``-th requested site."""
        return partial(self._read, j=j, site=site)

    def _read(self, act: Tensor, hook: Any, *, j: int, site: Site) -> None:
        # act: [batch, pos, d] or, for hook_z, [batch, pos, head, d_head]
        ar = torch.arange(act.shape[0], device=act.device).unsqueeze(1)
        picked = act[ar, self.index.on(act.device)]  # [batch, n_pos, ...]
        if site.per_head:
            w_o = self.w_o[site.layer].to(picked.dtype)  # [head, d_head, d]
            picked = torch.einsum("bnhk,hkd->bnhd", picked, w_o)
        self.buf[:, j] = picked.to(device=self.buf.device, dtype=self.buf.dtype)
        self.filled.add(j)
        if site == self.deepest:
            raise StopForward

    def rows_on_cpu(self) -> Tensor:
        """The batch's values, ``[batch, site, pos, ...]`` float32 on the CPU (one copy)."""
        return self.buf.cpu()


@torch.no_grad()
def _run(
    model: LoadedModel,
    prompts: list[str],
    sites: tuple[Site, ...],
    positions: Positions,
    batch_size: int | None,
    progress: bool,
) -> Tensor:
    n_pos = positions.count(model.chat.n_post)
    per_head = sites[0].per_head
    shape: tuple[int, ...] = (len(prompts), len(sites), n_pos)
    shape += (model.n_heads, model.d_model) if per_head else (model.d_model,)
    out = torch.empty(shape, dtype=torch.float32)
    w_o = {s.layer: model.bridge.blocks[s.layer].attn.W_O.detach() for s in sites if per_head}
    deepest = max(sites, key=lambda s: (s.layer, _ORDER_IN_BLOCK[s.kind]))
    # Group prompts of similar length so batches carry little padding; results go back in order.
    size = auto_batch_size(model, prompts, batch_size)
    chunks = by_length([len(p) for p in prompts], size)
    with progress_.task("capture", len(prompts), "prompt", show=progress) as bar:
        for rows in chunks:
            batch = model.chat.encode([prompts[i] for i in rows]).to(model.device)
            buf = torch.empty((len(rows), *shape[1:]), dtype=torch.float32, device=model.device)
            index = positions.index(batch)
            reader = _Reader(buf, index, w_o, deepest)
            # Positions after the batch's shared template tokens let those run once.
            start = batch.seq_len - batch.attention_mask.sum(-1) + batch.shared
            after = bool((index >= start[:, None].to(index.device)).all())
            hooks = [
                (hook_name(s), after_prefix(reader.hook(j, s)) if after else reader.hook(j, s))
                for j, s in enumerate(sites)
            ]
            forward(model, batch, hooks, stoppable=True, **keep_last(model))
            if len(reader.filled) != len(sites):
                silent = [str(s) for j, s in enumerate(sites) if j not in reader.filled]
                raise CaptureError(
                    f"the hooks of {silent} never ran on {model.identity.architecture}; these "
                    "sites cannot be captured on this model"
                )
            out[torch.tensor(rows)] = reader.rows_on_cpu()
            bar.update(len(rows))
    return out
