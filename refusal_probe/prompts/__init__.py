"""Prompt sets: load, validate and fingerprint the harmful and harmless instructions."""

from refusal_probe.prompts.sets import (
    Fixtures,
    Jailbreak,
    Pair,
    Prompt,
    PromptSet,
    default_prompts_dir,
    load_fixtures,
    matched_pairs,
)

__all__ = [
    "Fixtures",
    "Jailbreak",
    "Pair",
    "Prompt",
    "PromptSet",
    "default_prompts_dir",
    "load_fixtures",
    "matched_pairs",
]
