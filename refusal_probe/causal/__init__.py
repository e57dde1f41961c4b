"""Causal validation of a refusal direction: ablation, addition, their KL cost; transfer."""

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
