"""The ``suffix`` family of ``jailbreaks.jsonl``: records from a red-team result, written in place.

Only the ``suffix`` records are replaced; every line of another family is kept byte for byte, and
nothing is written outside the output folder (a temporary file there is renamed over the old one).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refusal_probe.redteam.search import RedTeamResult

#: The jailbreak family the red-team writes.
FAMILY = "suffix"


def suffix_records(
    result: RedTeamResult, base_ids: Sequence[str], first_number: int
) -> list[dict[str, Any]]:
    """``jailbreaks.jsonl`` records of the suffix family, numbered from ``first_number``."""
    cfg = result.config
    recs = []
    for k, (base, r) in enumerate(zip(base_ids, result.results, strict=True)):
        recs.append(
            {
                "id": f"jb-{first_number + k:04d}",
                "base_id": base,
                "family": FAMILY,
                "text": r.text(cfg.separator),
                "suffix": r.suffix,
                "redteam": {
                    "model": result.model_fingerprint,
                    "seed": cfg.seed,
                    "budget": f"{cfg.steps}x{cfg.candidates}",
                    "steps": r.steps,
                    "score_bare": round(r.score_bare, 4),
                    "score": round(r.score, 4),
                },
            }
        )
    return recs


def write_suffix_family(out: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Replace the suffix family of ``out/jailbreaks.jsonl`` with ``records``, atomically.

    Every line of another family is kept byte for byte, in its place; the new records follow them.
    Only ``out`` is written to (a temporary file there, renamed over the old one).
    """
    path = out / "jailbreaks.jsonl"
    kept = [line for line in _lines(path) if _family(line) != FAMILY]
    body = "".join(kept) + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-jailbreaks-", suffix=".jsonl", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(body)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def next_number(out: Path) -> int:
    """One past the largest ``jb-NNNN`` id of the families that are kept."""
    numbers = [0]
    for line in _lines(out / "jailbreaks.jsonl"):
        if _family(line) != FAMILY:
            rid = str(json.loads(line).get("id", ""))
            if rid.startswith("jb-") and rid[3:].isdigit():
                numbers.append(int(rid[3:]))
    return max(numbers) + 1


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def _family(line: str) -> str | None:
    if not line.strip():
        return None
    try:
        return str(json.loads(line).get("family"))
    except (json.JSONDecodeError, AttributeError):
        return None
