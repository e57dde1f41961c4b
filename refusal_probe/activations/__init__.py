"""Activations: typed sites, the scoped forward pass, capture, and the disk cache of tensors."""

from refusal_probe.activations.cache import (
    TensorCache,
)
from refusal_probe.activations.capture import (
    Activations,
    capture,
)
from refusal_probe.activations.sites import (
    LAST,
    LAST_INSTRUCTION,
    POST_INSTRUCTION,
    Positions,
    Site,
    hook_name,
)

__all__ = [
    "Activations",
    "LAST",
    "LAST_INSTRUCTION",
    "POST_INSTRUCTION",
    "Positions",
    "Site",
    "TensorCache",
    "capture",
    "hook_name",
]
