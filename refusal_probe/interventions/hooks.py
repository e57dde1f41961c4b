"""Interventions on the residual stream: small frozen values, applied through scoped hooks.

Axes: ``batch`` prompts of one forward pass, ``pos`` token positions, ``d`` d_model.

* :class:`Ablate` — directional ablation, ``x <- x - (x . r^) r^``, at every block input and every
  attention and MLP output, at all positions (generated tokens included, since every generation step
  runs the hooks again).
* :class:`Add` — activation addition, ``x <- x + alpha r`` (the raw vector), at the input of one
  block, at all positions (``span="all"``, Arditi et al.) or at the prompt's positions only
  (``span="prompt"``: generated tokens are left alone, see :func:`decoding`).
* :class:`PerRow` — a different list of the above for each row of a batch, so one forward pass can
  evaluate many candidate directions (or a baseline and an intervention side by side).
* :func:`orthogonalized` — an edited in-memory *copy* of the model with ``r^`` projected out of the
  weights that write to the residual stream; equal to hook ablation, and never saved.

An intervention only turns into hooks through :func:`hooks_for`, and hooks only live inside one
:func:`refusal_probe.activations.runner.forward` call, so nothing outlives the call that asked for it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Union

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.prefix import by_row, same_everywhere
from refusal_probe.activations.runner import Hook
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.direction.estimators import Direction, check_fits
from refusal_probe.errors import DirectionError
from refusal_probe.model.devices import PerDevice
from refusal_probe.model.loading import LoadedModel

#: Where directional ablation acts: the residual entering each block and each write into it.
ABLATION_KINDS: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out")

#: Which positions an :class:`Add` changes: all of them, or the prompt's only.
Span = Literal["all", "prompt"]
ADD_SPANS: tuple[str, ...] = ("all", "prompt")

# How many leading positions of the current forward pass's input belong to the prompt; None
# outside generation (every position is the prompt's). Set by the decoding loop.
_PROMPT_POSITIONS: ContextVar[int | None] = ContextVar("prompt_positions", default=None)


@contextmanager
def decoding(prompt_positions: int) -> Iterator[None]:
    """Declare that the first ``prompt_positions`` input positions of the passes inside are the prompt.

    A decoding loop wraps each step: the prompt pass declares its whole length, a cached step
    ``0`` (its one input token was generated), an uncached step the prompt's length. An
    ``Add(span="prompt")`` changes only those positions.
    """
    token = _PROMPT_POSITIONS.set(prompt_positions)
    try:
        yield
    finally:
        _PROMPT_POSITIONS.reset(token)


def project_out(x: Float[Tensor, "... d"], unit: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """``x - (x . u) u`` along the last axis (``u`` a unit vector, or zero for no change)."""
    u = unit.to(device=x.device, dtype=x.dtype)
    return x - (x * u).sum(-1, keepdim=True) * u


def add_vector(
    x: Float[Tensor, "... d"], vector: Float[Tensor, "... d"], alpha: float = 1.0
) -> Float[Tensor, "... d"]:
    """``x + alpha * vector`` along the last axis."""
    return x + alpha * vector.to(device=x.device, dtype=x.dtype)


@dataclass(frozen=True, eq=False)
class Ablate:
    """Project ``direction`` out of the residual stream everywhere (see the module docstring).

    Attributes:
        direction: The direction to remove (its norm does not matter).
    """

    direction: Direction

    def __repr__(self) -> str:
        d = self.direction
        return f"Ablate({d.method} L{d.layer} pos {d.position})"

    def hooks(self, model: LoadedModel, rows: Sequence[int] | None = None) -> list[Hook]:
        """Hooks for one forward pass (``rows`` is ignored: every row is ablated)."""
        check_fits(model, self.direction)
        fn = same_everywhere(partial(_ablate_hook, unit=PerDevice(self.direction.unit.float())))
        return [
            (hook_name(Site(layer, kind)), fn)
            for layer in range(model.n_layers)
            for kind in ABLATION_KINDS
        ]


@dataclass(frozen=True, eq=False)
class Add:
    """Add ``alpha`` times the raw direction to the input of one block.

    Attributes:
        direction: The vector to add (its norm matters: ``diff_means`` vectors are class-mean gaps).
        layer: The block whose input is changed; default the direction's own layer.
        alpha: The coefficient: ``+1`` induces refusal, ``-1`` suppresses it, ``0`` does nothing.
        span: ``"all"`` positions, generated tokens included; or the ``"prompt"``'s positions only.
    """

    direction: Direction
    layer: int | None = None
    alpha: float = 1.0
    span: Span = "all"

    def __post_init__(self) -> None:
        if self.span not in ADD_SPANS:
            raise DirectionError(f"Add span must be one of {', '.join(ADD_SPANS)}, not {self.span!r}")

    def __repr__(self) -> str:
        d = self.direction
        span = "" if self.span == "all" else f", span={self.span}"
        return f"Add({d.method} L{d.layer} pos {d.position}, layer={self.at}, alpha={self.alpha:g}{span})"

    @property
    def at(self) -> int:
        """The layer the vector is added at."""
        return self.direction.layer if self.layer is None else self.layer

    def hooks(self, model: LoadedModel, rows: Sequence[int] | None = None) -> list[Hook]:
        """Hooks for one forward pass (``rows`` is ignored)."""
        check_fits(model, self.direction)
        if not 0 <= self.at < model.n_layers:
            raise DirectionError(
                f"{self!r}: layer {self.at} is outside the model's {model.n_layers} layers"
            )
        vector = PerDevice(self.direction.vector.float() * self.alpha)
        fn = same_everywhere(partial(_add_hook, vector=vector, span=self.span))
        return [(hook_name(Site(self.at, "resid_pre")), fn)]


@dataclass(frozen=True, eq=False)
class PerRow:
    """A separate list of :class:`Ablate` / :class:`Add` for each row of the prompt list.

    ``plans[i]`` applies to prompt ``i`` wherever it lands in a batch; an empty plan leaves the row
    untouched. Within a row, ablation acts before addition at a shared site, and at most one
    :class:`Ablate` is allowed.

    Attributes:
        plans: One tuple of interventions per prompt.
    """

    plans: tuple[tuple[Ablate | Add, ...], ...]

    def __repr__(self) -> str:
        distinct = len({tuple(id(iv) for iv in p) for p in self.plans})
        return f"PerRow(rows={len(self.plans)}, distinct plans={distinct})"

    def hooks(self, model: LoadedModel, rows: Sequence[int] | None = None) -> list[Hook]:
        """Hooks for a batch of the prompts ``rows`` (indices into ``plans``), in batch order."""
        if rows is None:
            raise DirectionError("PerRow interventions need the row indices of the batch")
        plans = [self.plans[r] for r in rows]
        units = torch.zeros(len(rows), model.d_model)  # [batch, d]; a zero row is no ablation
        adds: dict[tuple[int, str], Tensor] = {}  # (layer, span) -> [batch, d]
        for i, plan in enumerate(plans):
            ablates = [iv for iv in plan if isinstance(iv, Ablate)]
            if len(ablates) > 1:
                raise DirectionError(
                    f"row {rows[i]} has {len(ablates)} Ablate interventions; PerRow allows one"
                )
            for iv in plan:
                check_fits(model, iv.direction)
                if isinstance(iv, Add) and not 0 <= iv.at < model.n_layers:
                    raise DirectionError(
                        f"{iv!r}: layer {iv.at} is outside the model's {model.n_layers} layers"
                    )
                if isinstance(iv, Ablate):
                    units[i] = iv.direction.unit.float()
                else:
                    adds.setdefault((iv.at, iv.span), torch.zeros(len(rows), model.d_model))[i] += (
                        iv.direction.vector.float() * iv.alpha
                    )
        hooks: list[Hook] = []
        if units.abs().sum() > 0:
            fn = by_row(_ablate_rows(units), units, _ablate_rows)  # [batch, 1, d]
            hooks += [
                (hook_name(Site(layer, kind)), fn)
                for layer in range(model.n_layers)
                for kind in ABLATION_KINDS
            ]
        for (layer, span), vecs in sorted(adds.items()):
            make = partial(_add_rows, span=span)
            hooks.append((hook_name(Site(layer, "resid_pre")), by_row(make(vecs), vecs, make)))
        return hooks


Intervention = Union[Ablate, Add, PerRow]


def hooks_for(
    model: LoadedModel, interventions: Sequence[Intervention], rows: Sequence[int] | None = None
) -> list[Hook]:
    """The hooks that carry out ``interventions`` (in order) on a batch of the prompts ``rows``."""
    hooks: list[Hook] = []
    for iv in interventions:
        if not isinstance(iv, (Ablate, Add, PerRow)):
            raise DirectionError(f"{iv!r} is not an intervention; use Ablate, Add or PerRow")
        hooks += iv.hooks(model, rows)
    return hooks


# The vectors are moved to each activation's device and dtype once per pass (PerDevice), not on
# every call: a generation step calls every ablation hook, and a model split over GPUs has its
# layers, and so its activations, on several devices.
def _ablate_hook(act: Tensor, hook: Any, unit: PerDevice) -> Tensor:
    return project_out(act, unit.like(act))


def _ablate_rows(units: Tensor) -> Any:
    """The ablation hook of a batch whose row ``i`` projects out ``units[i]`` (zero: nothing)."""
    return partial(_ablate_hook, unit=PerDevice(units[:, None, :]))


def _add_rows(vectors: Tensor, span: str) -> Any:
    """The addition hook of a batch whose row ``i`` adds ``vectors[i]``."""
    return partial(_add_hook, vector=PerDevice(vectors[:, None, :]), span=span)


def _add_hook(act: Tensor, hook: Any, vector: PerDevice, span: str = "all") -> Tensor:
    keep = _PROMPT_POSITIONS.get() if span == "prompt" else None
    if keep is None or keep >= act.shape[1]:
        return add_vector(act, vector.like(act))
    if keep <= 0:
        return act
    # act: [batch, pos, d]; only the first `keep` positions are the prompt's
    return torch.cat([add_vector(act[:, :keep], vector.like(act)), act[:, keep:]], dim=1)


# ---------------------------------------------------------------------------------------------
# weight orthogonalization


def orthogonalized(model: LoadedModel, direction: Direction) -> LoadedModel:
    """An in-memory copy of ``model`` whose weights cannot write ``direction`` to the residual.

    Every matrix that writes to the residual stream is edited, ``W <- W - r^ r^T W``: the token
    (and learned position) embeddings, each attention output projection and each MLP down
    projection, biases included. A tied unembedding is untied first, so the read-out is unchanged.
    The result computes what hook ablation (:class:`Ablate`) computes.

    The loaded model is never modified. The copy exists to measure, not to ship: its
    ``save_pretrained`` and ``push_to_hub`` raise, and its identity says it was edited.

    Raises:
        DirectionError: The direction does not fit the model, or the architecture has norms after
            its sublayers (the edit would not equal hook ablation there).
    """
    check_fits(model, direction)
    hf_names = {n.rsplit(".", 1)[-1] for n, _ in model.hf_model.named_modules()}
    if "post_feedforward_layernorm" in hf_names:
        raise DirectionError(
            f"{model.identity.spec!r} normalizes after its sublayers, so weight "
            "orthogonalization is not equal to ablation there; use Ablate hooks instead"
        )
    edited = copy.deepcopy(model)
    hf = edited.hf_model
    unit = direction.unit
    with torch.no_grad():
        emb, unemb = hf.get_input_embeddings(), hf.get_output_embeddings()
        if unemb is not None and unemb.weight is emb.weight:
            unemb.weight = torch.nn.Parameter(emb.weight.detach().clone())
        _orthogonalize_rows(emb.weight, unit)  # [vocab, d]: each row is written to the stream
        pos = getattr(edited.bridge, "pos_embed", None)
        if pos is not None:
            _orthogonalize_rows(pos.original_component.weight, unit)
        for i, block in enumerate(edited.bridge.blocks):
            for part in ("attn.o", "mlp.out"):
                _orthogonalize_writer(_component(block, part, i, model), unit)
    _forbid_export(hf)
    return dataclasses.replace(edited, identity=_edited_identity(model, direction))


def _component(block: Any, path: str, i: int, model: LoadedModel) -> Any:
    obj = block
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            raise DirectionError(
                f"{model.identity.spec!r}: block {i} has no {path} projection the bridge "
                "exposes; weight orthogonalization cannot edit it, use Ablate hooks"
            )
    return obj.original_component


def _orthogonalize_rows(weight: Tensor, unit: Tensor) -> None:
    """In place: ``W <- W - (W r^) r^^T`` for a ``[n, d]`` matrix whose rows live in the stream."""
    w = weight.double()
    u = unit.to(w.device)
    weight.copy_(w - (w @ u)[:, None] * u[None, :])


def _orthogonalize_writer(module: Any, unit: Tensor) -> None:
    """In place: remove ``r^`` from a layer's output.

    ``nn.Linear`` weights are ``[out, in]``; GPT-2's ``Conv1D`` weights are ``[in, out]``.
    """
    if type(module).__name__ == "Conv1D":
        _orthogonalize_rows(module.weight, unit)  # Conv1D: y = x W, rows of W are outputs
    elif isinstance(module, torch.nn.Linear):
        w = module.weight.double()  # [d, in]
        u = unit.to(w.device)
        module.weight.copy_(w - u[:, None] * (u @ w)[None, :])
    else:
        raise DirectionError(f"cannot orthogonalize a {type(module).__name__}; use Ablate hooks")
    if getattr(module, "bias", None) is not None:
        b = module.bias.double()
        module.bias.copy_(b - (b @ unit.to(b.device)) * unit.to(b.device))


def _forbid_export(hf_model: Any) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise DirectionError(
            "this is an orthogonalized copy made to measure the refusal direction; it "
            "is not saved or shared as a checkpoint"
        )

    hf_model.save_pretrained = refuse
    hf_model.push_to_hub = refuse


def _edited_identity(model: LoadedModel, direction: Direction) -> Any:
    ident = model.identity
    digest = hashlib.sha256(
        f"{ident.weights_sha256}:orthogonalized:{direction.sha256}".encode()
    ).hexdigest()
    return dataclasses.replace(
        ident,
        spec=f"{ident.spec}+orthogonalized({direction.method} L{direction.layer} "
        f"pos {direction.position})",
        source="edited",
        weights_sha256=digest,
        fingerprint=digest[:16],
    )
