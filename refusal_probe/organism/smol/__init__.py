"""The realistic organism family: LoRA adapters on SmolLM2-135M-Instruct.

``organism-smol-chat`` is a safety adapter the project trains on natural-language requests; its
two fine-tunes continue from it (benign: ordinary helpful data; harmful: placeholder compliance).
Loading lives in :mod:`refusal_probe.model.organisms`; rebuilding here:
``python -m refusal_probe.organism train --family smol``.
"""

from refusal_probe.organism.smol.base import Base, load_base
from refusal_probe.organism.smol.family import CHECKPOINTS, build_family
from refusal_probe.organism.smol.lora import LoraRecipe, train_adapter

__all__ = ["CHECKPOINTS", "Base", "LoraRecipe", "build_family", "load_base", "train_adapter"]
