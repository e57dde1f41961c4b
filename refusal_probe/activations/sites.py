"""Typed activation sites and positions, and the one function that names their hooks.

A :class:`Site` is a place in the network (``Site(3, "resid_pre")``); a :class:`Positions` says
which token positions of each prompt to read there. :func:`hook_name` is the only place in the
package that turns a site into a TransformerLens hook name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from jaxtyping import Int
from torch import Tensor

from refusal_probe.errors import CaptureError
from refusal_probe.model.chat import Encoded

#: Where in a block a site reads (see :class:`Site`).
SiteKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out"]
SITE_KINDS: tuple[SiteKind, ...] = get_args(SiteKind)

_HOOKS: dict[SiteKind, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    # Per-head outputs are computed from the attention's pre-projection values (z) and W_O.
    "head_out": "blocks.{layer}.attn.hook_z",
}


@dataclass(frozen=True, order=True)
class Site:
    """A place in the network.

    Attributes:
        layer: Block index, 0-based.
        kind: ``resid_pre`` (residual entering the block), ``resid_mid`` (after attention),
            ``resid_post`` (leaving the block), ``attn_out``, ``mlp_out``, or ``head_out``
            (each attention head's contribution to the residual, an extra head axis).
    """

    layer: int
    kind: SiteKind = "resid_pre"

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise CaptureError(f"unknown site kind {self.kind!r}; use one of {SITE_KINDS}")
        if self.layer < 0:
            raise CaptureError(f"site layer must be >= 0, got {self.layer}")

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind}"

    @property
    def per_head(self) -> bool:
        """Whether the site carries a head axis."""
        return self.kind == "head_out"


def hook_name(site: Site) -> str:
    """Return the TransformerLens hook name for a site (the single place this mapping lives)."""
    return _HOOKS[site.kind].format(layer=site.layer)


#: The hook on the model's output logits (the unembedding), ``[batch, pos, vocab]``.
_LOGITS_HOOK = "unembed.hook_out"


def logits_hook_name() -> str:
    """Return the hook name of the output logits (the unembedding's output)."""
    return _LOGITS_HOOK


def all_layers(n_layers: int, kind: SiteKind = "resid_pre") -> list[Site]:
    """One site of ``kind`` at every layer."""
    return [Site(layer, kind) for layer in range(n_layers)]


@dataclass(frozen=True)
class Positions:
    """Which token positions of each prompt to read.

    Attributes:
        kind: ``post_instruction`` (the template tokens after the user's text), ``last_instruction``
            (the user's last token), ``last`` (the final prompt token) or ``explicit``.
        offsets: For ``explicit``: negative offsets from the end of each prompt (``-1`` is the last
            token); left padding makes them line up across prompts.
    """

    kind: str = "post_instruction"
    offsets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        kinds = ("post_instruction", "last_instruction", "last", "explicit")
        if self.kind not in kinds:
            raise CaptureError(f"unknown positions kind {self.kind!r}; use one of {kinds}")
        if self.kind == "explicit" and (not self.offsets or any(o >= 0 for o in self.offsets)):
            raise CaptureError(
                "explicit positions are negative offsets from the end of the prompt (-1 = last "
                f"token); got {self.offsets!r}"
            )

    def __str__(self) -> str:
        return self.kind if self.kind != "explicit" else f"explicit{list(self.offsets)}"

    def count(self, n_post: int) -> int:
        """How many positions this selects per prompt, given the post-instruction length."""
        if self.kind == "post_instruction":
            return n_post
        if self.kind == "explicit":
            return len(self.offsets)
        return 1

    def index(self, batch: Encoded) -> Int[Tensor, "batch n"]:
        """Absolute indices into the padded batch, ``[batch, n]``."""
        b, width = batch.input_ids.shape
        if self.kind == "last_instruction":
            return batch.last_instruction.view(b, 1)
        if self.kind == "last":
            offsets: tuple[int, ...] = (-1,)
        elif self.kind == "post_instruction":
            offsets = tuple(range(-batch.n_post, 0))
        else:
            offsets = self.offsets
        lengths = batch.attention_mask.sum(-1)
        if min(offsets) < -int(lengths.min()):
            raise CaptureError(
                f"offset {min(offsets)} reaches before the start of the shortest prompt"
            )
        device = batch.input_ids.device
        idx = torch.tensor([width + o for o in offsets], dtype=torch.long, device=device)
        return idx.view(1, -1).expand(b, -1)


POST_INSTRUCTION = Positions("post_instruction")
LAST_INSTRUCTION = Positions("last_instruction")
LAST = Positions("last")
