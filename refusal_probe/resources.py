"""Where the shipped audit suite and fixtures live: this checkout, or the installed package.

In a checkout of the repository they are the top-level ``audits/`` and ``fixtures/`` folders. A
built wheel carries the same folders as ``refusal_probe/shipped/audits`` and
``refusal_probe/shipped/fixtures`` (``setup.py`` maps them; nothing is copied by hand), so an
installed refusal-probe audits and tests from any folder. ``$REFUSAL_PROBE_FIXTURES`` overrides
the fixtures folder.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _shipped(name: str) -> Path:
    """The folder ``name`` of the checkout this package runs from, else the installed copy."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / name).is_dir():
        return _CHECKOUT / name
    return _PACKAGE / "shipped" / name


#: The shipped fixtures: ``prompts/`` (the prompt sets) and ``models/`` (the organism family).
FIXTURES_DIR = Path(os.environ.get("REFUSAL_PROBE_FIXTURES") or _shipped("fixtures"))
#: The shipped audit suite (one test file per audit) and its policies.
AUDITS_DIR = _shipped("audits")
#: The shipped default policy.
DEFAULT_POLICY = AUDITS_DIR / "policy.toml"
