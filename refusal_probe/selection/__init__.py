"""Choosing the refusal direction among the candidates: screening, scoring, the one-call search."""

from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.screening import (
    ablation_moment,
    estimated_bypass,
)
from refusal_probe.selection.search import (
    DirectionResult,
    candidate_directions,
    find_refusal_direction,
)
from refusal_probe.selection.selection import (
    DISCARD_REASONS,
    CandidateScore,
    DiscardReason,
    Selection,
    score_candidates,
)

__all__ = [
    "DISCARD_REASONS",
    "CandidateScore",
    "DiscardReason",
    "DirectionConfig",
    "DirectionResult",
    "Selection",
    "ablation_moment",
    "candidate_directions",
    "estimated_bypass",
    "find_refusal_direction",
    "score_candidates",
]
