"""The ``suffix`` family of a jailbreak file: records from a red-team result, written in place.

Attacks on the test split's harmful prompts go to ``jailbreaks.jsonl`` (where the monitor measures
detection); attacks on another split's go to that split's own file, ``jailbreaks-<split>.jsonl``
(:func:`refusal_probe.prompts.sets.jailbreak_file`), and each of their records says its ``split``: the
monitor chooses its readout with the ``val`` attacks, and no test prompt is ever among them.
Only the ``suffix`` records of the file are replaced; every line of another family is kept byte
for byte, and nothing is written outside the output folder (a temporary file there is renamed
over the old one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refusal_probe.atomic import write_text_atomic
from refusal_probe.prompts.sets import SPLITS, jailbreak_file
from refusal_probe.redteam.search import RedTeamResult

#: The jailbreak family the red-team writes.
FAMILY = "suffix"


def suffix_records(
    result: RedTeamResult, base_ids: Sequence[str], first_number: int, split: str = "test"
) -> list[dict[str, Any]]:
    """Jailbreak records of the suffix family, numbered from ``first_number``.

    Records of another split than ``test`` also carry ``"split"`` (their file's marker).
    """
    cfg = result.config
    marker = {} if split == "test" else {"split": split}
    return [
        {
            "id": f"jb-{first_number + k:04d}",
            "base_id": base,
            "family": FAMILY,
            **marker,
            "text": r.text(cfg.separator),
            "suffix": r.suffix,
            "redteam": result.recipe(k),
        }
        for k, (base, r) in enumerate(zip(base_ids, result.results, strict=True))
    ]


def write_suffix_family(out: Path, records: Sequence[dict[str, Any]], split: str = "test") -> Path:
    """Replace the suffix family of ``split``'s jailbreak file in ``out``, atomically.

    Every line of another family is kept byte for byte, in its place; the new records follow them.
    Only ``out`` is written to (a temporary file there, renamed over the old one).
    """
    path = out / jailbreak_file(split)
    kept = [line for line in _lines(path) if _family(line) != FAMILY]
    body = "".join(kept) + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_text_atomic(path, body)
    return path


def next_number(out: Path, split: str = "test") -> int:
    """One past the largest ``jb-NNNN`` id that is kept when ``split``'s suffix family is replaced.

    The kept lines are the other families of ``split``'s file and every line of the other splits'
    files, so ids stay unique across the folder.
    """
    numbers = [0]
    for other in SPLITS:
        for line in _lines(out / jailbreak_file(other)):
            if other != split or _family(line) != FAMILY:
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
