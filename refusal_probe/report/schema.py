"""The versioned JSON schema of ``audit.json``, and reading records back safely."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from refusal_probe.errors import ReportError
from refusal_probe.report.record import SCHEMA_ID, SCHEMA_VERSION, AuditRecord

SCHEMA_PATH = Path(__file__).with_name("audit.schema.json")


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON schema of audit.json (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_record(data: dict[str, Any], source: str = "audit record") -> None:
    """Check audit.json content against the schema.

    Raises:
        ReportError: Naming ``source``, the JSON path of each problem and what is wrong there.
    """
    import jsonschema

    if isinstance(data, dict) and data.get("schema") == SCHEMA_ID:
        major = str(data.get("schema_version", "")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ReportError(
                f"{source}: schema version {data.get('schema_version')!r} is not readable by this "
                f"refusal-probe (reads {SCHEMA_VERSION.split('.')[0]}.x); re-run the audit with "
                "this version"
            )
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if problems:
        lines = [f"  at {_where(e.absolute_path)}: {e.message[:200]}" for e in problems[:10]]
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ReportError(
            f"{source} does not match the audit.json schema {SCHEMA_VERSION}:\n"
            + "\n".join(lines)
            + more
        )


def read_record(path: str | Path) -> AuditRecord:
    """Load and validate an audit.json file (or a run folder holding one).

    Raises:
        ReportError: The file is missing, not JSON, or does not match the schema.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "audit.json"
    if not path.is_file():
        raise ReportError(
            f"{path} does not exist; pass the audit.json of a run "
            "(reports/<model>/<run-id>/audit.json)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(
            f"{path} is not valid JSON ({exc}); the file is corrupted, re-run the audit"
        ) from None
    validate_record(data, source=str(path))
    return AuditRecord.from_dict(data)


def _where(path: Any) -> str:
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out
