"""What gets patched: typed components and the grids they form.

Axes: ``layer`` blocks, ``head`` attention (query) heads, ``pos`` token positions given as negative
offsets from the end of each prompt (left padding lines them up across prompts; ``-1`` is the last
prompt token).

A :class:`Component` is one activation slice: the residual stream entering a block, one attention
head's output, or one MLP's output, at one or several positions. A *grid* is a named family of
components laid out on axes, ready to become a heatmap:

==========  =====================  ===============================================================
grid        axes                   component
==========  =====================  ===============================================================
resid       layer x pos            residual stream entering the block, at one position
head        layer x head           one head's output at every position of the span together
head_pos    layer x head x pos     one head's output at one position
mlp         layer                  one MLP's output at every position of the span together
mlp_pos     layer x pos            one MLP's output at one position
==========  =====================  ===============================================================

Heads are patched through their pre-projection values ``z`` (``attn.hook_z``); a head's output is
``z @ W_O`` for that head, so restoring ``z`` restores exactly that head's write to the residual.
"""

from __future__ import annotations

from dataclasses import dataclass

from refusal_probe.activations.sites import Site
from refusal_probe.errors import PatchingError

#: Grid names, in the order the reports show them.
GRIDS: tuple[str, ...] = ("resid", "head", "head_pos", "mlp", "mlp_pos")

_KIND_SITE = {"resid": "resid_pre", "head": "head_out", "mlp": "mlp_out"}
_GRID_AXES = {
    "resid": ("layer", "pos"),
    "head": ("layer", "head"),
    "head_pos": ("layer", "head", "pos"),
    "mlp": ("layer",),
    "mlp_pos": ("layer", "pos"),
}


@dataclass(frozen=True, order=True)
class Component:
    """One activation slice to patch.

    Attributes:
        kind: ``resid`` (residual entering the block), ``head`` (one attention head's output) or
            ``mlp`` (the MLP's output).
        layer: Block index, 0-based.
        head: Head index for ``head`` components; ``-1`` for the others (so components sort; see
            :attr:`head_index`).
        offsets: Negative offsets from the end of the prompt; several offsets patch those
            positions together.
    """

    kind: str
    layer: int
    head: int = -1
    offsets: tuple[int, ...] = (-1,)

    def __post_init__(self) -> None:
        if self.kind not in _KIND_SITE:
            raise PatchingError(
                f"unknown component kind {self.kind!r}; use one of {tuple(_KIND_SITE)}"
            )
        if (self.kind == "head") != (self.head >= 0):
            raise PatchingError(
                f"{self.kind} component: a head index is required for 'head' and only for it"
            )
        if (
            not self.offsets
            or any(o >= 0 for o in self.offsets)
            or len(set(self.offsets)) != len(self.offsets)
        ):
            raise PatchingError(
                "component offsets are distinct negative offsets from the end of the prompt; "
                f"got {self.offsets!r}"
            )

    def __str__(self) -> str:
        what = f"H{self.head}" if self.kind == "head" else self.kind
        span = self.offsets
        pos = str(span[0]) if len(span) == 1 else f"{min(span)}..{max(span)}"
        return f"L{self.layer}.{what}@{pos}"

    @property
    def site(self) -> Site:
        """The activation site this component lives at."""
        return Site(self.layer, _KIND_SITE[self.kind])

    @property
    def head_index(self) -> int | None:
        """The head index, or ``None`` for non-head components."""
        return self.head if self.head >= 0 else None

    @property
    def start(self) -> int:
        """The earliest patched offset (positions before it are unaffected by the patch)."""
        return min(self.offsets)


@dataclass(frozen=True)
class Grid:
    """A named family of components laid out on axes.

    Attributes:
        name: One of :data:`GRIDS`.
        axes: Axis names, e.g. ``("layer", "head", "pos")``.
        shape: Length of each axis.
        labels: Tick labels per axis (layer and head indices, position offsets).
        components: The components in row-major order over ``axes``.
    """

    name: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    labels: tuple[tuple[int, ...], ...]
    components: tuple[Component, ...]


def make_grid(
    name: str,
    n_layers: int,
    n_heads: int,
    offsets: tuple[int, ...],
    layers: tuple[int, ...] | None = None,
) -> Grid:
    """Build the grid ``name`` over ``layers`` (default all) and the position ``offsets``.

    For ``head`` and ``mlp`` the offsets are patched together; for the ``*_pos`` grids and
    ``resid`` each offset is its own component.
    """
    if name not in GRIDS:
        raise PatchingError(f"unknown grid {name!r}; use one of {GRIDS}")
    if not offsets:
        raise PatchingError("no positions to patch; pass at least one position")
    lay = tuple(range(n_layers)) if layers is None else tuple(layers)
    bad = [x for x in lay if not 0 <= x < n_layers]
    if bad:
        raise PatchingError(f"layers {bad} are outside the model's {n_layers} layers")
    heads = tuple(range(n_heads))
    span = tuple(sorted(offsets))
    comps: list[Component]
    if name == "resid":
        comps = [Component("resid", layer, -1, (o,)) for layer in lay for o in span]
        labels: tuple[tuple[int, ...], ...] = (lay, span)
    elif name == "head":
        comps = [Component("head", layer, h, span) for layer in lay for h in heads]
        labels = (lay, heads)
    elif name == "head_pos":
        comps = [Component("head", layer, h, (o,)) for layer in lay for h in heads for o in span]
        labels = (lay, heads, span)
    elif name == "mlp":
        comps = [Component("mlp", layer, -1, span) for layer in lay]
        labels = (lay,)
    else:
        comps = [Component("mlp", layer, -1, (o,)) for layer in lay for o in span]
        labels = (lay, span)
    return Grid(name, _GRID_AXES[name], tuple(len(x) for x in labels), labels, tuple(comps))
