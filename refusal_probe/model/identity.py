"""What a loaded model is: its identity for reports and its key for every cache.

:class:`ModelIdentity` names a checkpoint exactly in a report. :class:`ModelKey` is what every
cached result of a model depends on — activations, scores, selections, validations, an audit's
results — so all cache layers build their keys from the same value and cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from refusal_probe.model.chat import ChatFormat


@dataclass(frozen=True)
class ModelIdentity:
    """What a report needs to name a checkpoint exactly.

    Attributes:
        spec: The spec string the user gave.
        source: ``"organism"``, ``"local"``, ``"gguf"`` or ``"hub"``.
        path: The folder (or GGUF file) the weights were read from.
        weights_sha256: SHA-256 over the weight files, in name order, streamed.
        architecture: The Hugging Face architecture class name.
        n_layers: Number of transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention (query) heads per block.
        n_kv_heads: Key/value heads per block (fewer than ``n_heads`` under GQA).
        d_vocab: Vocabulary size.
        dtype: The dtype the model runs in.
        chat_template: ``"model"`` when the tokenizer's chat template is used, ``"plain"`` for the
            documented fallback of :mod:`refusal_probe.model.chat`.
        chat_template_sha256: SHA-256 of the template text actually used.
        fingerprint: Short stable hash of everything above except ``spec``, ``path`` and
            ``source``; reports name the model by it.
    """

    spec: str
    source: str
    path: str
    weights_sha256: str
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_vocab: int
    dtype: str
    chat_template: str
    chat_template_sha256: str
    fingerprint: str = field(default="")

    def to_dict(self) -> dict[str, Any]:
        """Return the identity as plain JSON-ready data."""
        return asdict(self)

    def with_fingerprint(self) -> ModelIdentity:
        """This identity with :attr:`fingerprint` computed from its other fields."""
        excluded = ("spec", "path", "source", "fingerprint")
        payload = {k: v for k, v in self.to_dict().items() if k not in excluded}
        fp = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        return ModelIdentity(**{**self.to_dict(), "fingerprint": fp})


@dataclass(frozen=True)
class ModelKey:
    """What every cached result of a model depends on; the one model part of every cache key.

    Build it with :meth:`of` (or read ``LoadedModel.key``); a key is taken when a result is looked
    up, so a template that renders today's date gives another key on another day.

    Attributes:
        weights_sha256: SHA-256 over the weight files.
        architecture: The Hugging Face architecture class name.
        fingerprint: The identity's fingerprint (shape, vocabulary, template kind).
        chat_template_sha256: SHA-256 of the chat template text.
        chat_rendered_sha256: SHA-256 of a fixed probe conversation as the template renders it
            at the time the key is taken.
        placement: The kind of device (``"cpu"``, ``"cuda"``), or ``"device_map=…"`` for a model
            spread over devices; never a device index, so which GPU of a machine ran a result
            does not matter.
        dtype: The dtype the model runs in (``"float32"``).
    """

    weights_sha256: str
    architecture: str
    fingerprint: str
    chat_template_sha256: str
    chat_rendered_sha256: str
    placement: str
    dtype: str

    @classmethod
    def of(cls, identity: ModelIdentity, chat: ChatFormat, placement: str) -> ModelKey:
        """The key of a model with this identity, chat format and placement, rendered now."""
        return cls(
            weights_sha256=identity.weights_sha256,
            architecture=identity.architecture,
            fingerprint=identity.fingerprint,
            chat_template_sha256=chat.template_sha256,
            chat_rendered_sha256=chat.rendered_sha256,
            placement=placement,
            dtype=identity.dtype,
        )

    def to_dict(self) -> dict[str, str]:
        """Plain JSON-ready data (what cache keys embed)."""
        return asdict(self)


def placement_of(device: str | torch.device, device_map: str | dict[str, Any] | None) -> str:
    """The placement part of a :class:`ModelKey`: a device kind or a device map, no index.

    A dict device map keeps its module → device assignment with each device reduced to its kind
    (an integer index is a CUDA device).
    """
    if device_map is None:
        return torch.device(device).type
    if isinstance(device_map, str):
        return f"device_map={device_map}"
    kinds = {
        k: "cuda" if isinstance(v, int) else str(v).split(":")[0]  # "cuda:1", "cpu", "disk"
        for k, v in sorted(device_map.items())
    }
    return "device_map=" + json.dumps(kinds, sort_keys=True)
