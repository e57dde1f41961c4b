"""The model: where a spec points, safe loading behind the bridge, identity, chat format, devices."""

from refusal_probe.model.chat import (
    PLAIN_TEMPLATE,
    ChatFormat,
    Encoded,
)
from refusal_probe.model.devices import (
    auto_batch_size,
    parse_device_map,
)
from refusal_probe.model.identity import ModelIdentity, ModelKey
from refusal_probe.model.loading import (
    DEFAULT_MODEL,
    ORGANISM_ALIASES,
    LoadedModel,
    LoadOptions,
    load_model,
)

__all__ = [
    "ChatFormat",
    "DEFAULT_MODEL",
    "Encoded",
    "LoadOptions",
    "LoadedModel",
    "ModelIdentity",
    "ModelKey",
    "ORGANISM_ALIASES",
    "PLAIN_TEMPLATE",
    "auto_batch_size",
    "load_model",
    "parse_device_map",
]
