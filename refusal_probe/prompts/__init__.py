"""Prompt sets: load, validate and fingerprint the harmful and harmless instructions.

The shipped fixtures folder is read by :func:`load_fixtures`; a user's sets in any supported
format (JSONL, JSON, CSV, Parquet, ``datasets`` folders, ``hf:`` names) by
:func:`load_user_prompts` / :func:`load_prompt_source`.
"""

from refusal_probe.prompts.formats import Layout, PromptSetError, detect_layout, parse_label
from refusal_probe.prompts.limits import TextLimit
from refusal_probe.prompts.loaded import LoadedPrompts, check_ready, merge
from refusal_probe.prompts.loading import Fields, load_prompt_source, load_user_prompts
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
from refusal_probe.prompts.splits import (
    DEFAULT_MINIMUM,
    HELD_OUT,
    Fractions,
    assign_splits,
    assignment_sha256,
)

__all__ = [
    "DEFAULT_MINIMUM",
    "HELD_OUT",
    "Fields",
    "Fixtures",
    "Fractions",
    "Jailbreak",
    "Layout",
    "LoadedPrompts",
    "Pair",
    "Prompt",
    "PromptSet",
    "PromptSetError",
    "TextLimit",
    "assign_splits",
    "assignment_sha256",
    "check_ready",
    "default_prompts_dir",
    "detect_layout",
    "load_fixtures",
    "load_prompt_source",
    "load_user_prompts",
    "matched_pairs",
    "merge",
    "parse_label",
]
