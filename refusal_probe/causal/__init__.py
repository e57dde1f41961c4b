"""Causal validation of a refusal direction: ablation, addition and their KL cost; transfer to another model."""

from refusal_probe.causal.validation import (
    DosePoint,
    TransferResult,
    ValidationConfig,
    ValidationResult,
    transfer,
    validate_direction,
)

__all__ = [
    "DosePoint",
    "TransferResult",
    "ValidationConfig",
    "ValidationResult",
    "transfer",
    "validate_direction",
]
