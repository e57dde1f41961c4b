"""The runs of a series audited apart: one job per checkpoint, one shared reports folder.

A CI matrix job or a Slurm array task audits one checkpoint each, into the same reports folder
(``--report-dir shared/``, or artifacts downloaded into one folder), which then holds
``<model>/<run-id>/audit.json`` per job. :func:`runs_in` finds the run of each checkpoint there:
the newest complete one (an interrupted or errored run only when the checkpoint has no complete
one), read from the records themselves, so ``latest`` links lost on the way (artifact stores
drop symbolic links) do not matter. The checkpoints come in natural order of their model specs
(``step-500`` before ``step-1000``); to fix another order, list the run folders instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refusal_probe.errors import ReportError

#: Folders of a reports root that are not a model's runs.
_NOT_MODELS = ("trend",)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders the numbers inside ``text`` by value (``ck-500`` < ``ck-1000``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def runs_in(root: str | Path) -> list[Path]:
    """The run folder of each checkpoint audited into the reports folder ``root``, in order.

    Raises:
        ReportError: ``root`` holds no run, or an ``audit.json`` there is not valid JSON.
    """
    root = Path(root)
    best: dict[str, tuple[tuple[bool, str], Path]] = {}
    for record in sorted(root.glob("*/*/audit.json")):
        run, model = record.parent, record.parent.parent
        if run.name.startswith(".") or model.name.startswith(".") or model.name in _NOT_MODELS:
            continue  # a folder still being written, or a trend page
        if run.is_symlink() or run.name == "latest":
            continue  # the run `latest` names (or an artifact store's copy of it) is found too
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(f"{record} cannot be read ({exc}); remove or re-run it") from None
        spec = str((data.get("model") or {}).get("spec") or model.name)
        rank = (data.get("status") == "complete", str((data.get("run") or {}).get("id", "")))
        if spec not in best or rank > best[spec][0]:
            best[spec] = (rank, run)
    if not best:
        raise ReportError(
            f"{root} holds no run (no <model>/<run-id>/audit.json); pass the --report-dir the "
            "audits wrote to, or their audit.json files"
        )
    return [best[spec][1] for spec in sorted(best, key=natural_key)]


def expand_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path as given, except a reports folder, which stands for its runs (:func:`runs_in`).

    A path is a run when it is an ``audit.json`` file or a folder holding one.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        is_run = p.is_file() or (p / "audit.json").exists() or not p.is_dir()
        out += [p] if is_run else runs_in(p)
    return out
