"""refusal-probe: find, measure and audit the refusal mechanism of language models."""

from refusal_probe.cache import TensorCache
from refusal_probe.capture import Activations, capture
from refusal_probe.chat import PLAIN_TEMPLATE, ChatFormat, Encoded
from refusal_probe.errors import (
    CaptureError,
    ChatFormatError,
    ModelLoadError,
    RefusalProbeError,
    UnsafeCheckpointError,
)
from refusal_probe.models import (
    DEFAULT_MODEL,
    ORGANISM_ALIASES,
    LoadedModel,
    LoadOptions,
    ModelIdentity,
    load_model,
)
from refusal_probe.sites import LAST, LAST_INSTRUCTION, POST_INSTRUCTION, Positions, Site, hook_name

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "LAST",
    "LAST_INSTRUCTION",
    "ORGANISM_ALIASES",
    "PLAIN_TEMPLATE",
    "POST_INSTRUCTION",
    "Activations",
    "CaptureError",
    "ChatFormat",
    "ChatFormatError",
    "Encoded",
    "LoadOptions",
    "LoadedModel",
    "ModelIdentity",
    "ModelLoadError",
    "Positions",
    "RefusalProbeError",
    "Site",
    "TensorCache",
    "UnsafeCheckpointError",
    "capture",
    "hook_name",
    "load_model",
]
