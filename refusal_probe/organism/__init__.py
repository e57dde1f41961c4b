"""The shipped model organism: its grammar and corpora, training, and the checkpoint family.

``python -m refusal_probe.organism {prompts,train,evaluate}`` writes the prompt fixtures,
rebuilds the family from a :class:`Recipe`, or re-measures saved checkpoints.
"""

from refusal_probe.organism.pipeline import CHECKPOINTS, Recipe, build_family

__all__ = ["CHECKPOINTS", "Recipe", "build_family"]
