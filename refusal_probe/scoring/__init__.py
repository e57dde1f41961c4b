"""Refusal scoring: the refusal-token logit proxy, greedy generation and the completion judge."""

from refusal_probe.scoring.generation import (
    Judgement,
    generate,
    is_refusal,
    judge,
    refusal_rate,
)
from refusal_probe.scoring.refusal import (
    REFUSAL_PHRASES,
    RefusalTokens,
    refusal_scores,
    refusal_tokens,
)

__all__ = [
    "Judgement",
    "REFUSAL_PHRASES",
    "RefusalTokens",
    "generate",
    "is_refusal",
    "judge",
    "refusal_rate",
    "refusal_scores",
    "refusal_tokens",
]
