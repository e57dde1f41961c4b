"""Refusal scoring: the refusal-token logit proxy, greedy generation and the completion judges."""

from refusal_probe.scoring.generation import (
    Judgement,
    generate,
    judge,
    refusal_rate,
)
from refusal_probe.scoring.refusal import (
    REFUSAL_PHRASES,
    RefusalTokens,
    refusal_scores,
    refusal_tokens,
)
from refusal_probe.scoring.reply import JUDGES, Reading, is_refusal, read_reply, refused

__all__ = [
    "JUDGES",
    "Judgement",
    "REFUSAL_PHRASES",
    "RefusalTokens",
    "generate",
    "is_refusal",
    "judge",
    "Reading",
    "read_reply",
    "refusal_rate",
    "refusal_scores",
    "refusal_tokens",
    "refused",
]
