"""Interventions on the residual stream: ablate, add, orthogonalize, as frozen values with scoped hooks."""

from refusal_probe.interventions.hooks import (
    Ablate,
    Add,
    PerRow,
    orthogonalized,
)

__all__ = [
    "Ablate",
    "Add",
    "PerRow",
    "orthogonalized",
]
