"""The audit policy: the one registry of audits and checks, each bar with a one-line rationale.

Layout (``audits/policy.toml``)::

    version = 1

    [settings]
    confidence = 0.95        # two-sided level of every interval

    [behaviour]
    description = "audit of refusal behaviour"   # the pytest marker's help text

    [behaviour.harmful_refusal]
    at_least = 0.90          # or at_most = ...
    unit = "probability"
    rationale = "Why this bar."

The file is the registry: each top-level table is an audit (its name is the pytest marker and
the prefix of its checks' ids, in the report in the file's order), and each of its sub-tables a
check ``<audit>.<name>`` that an audit test asks for by id. Adding a check is a section here and
a test function that calls ``audit.check("<audit>.<name>", ...)``; nothing in the package changes.

A policy may be an overlay: ``extends = "policy.toml"`` (relative to the file) or
``extends = "default"`` (the shipped ``audits/policy.toml``) reads that file first; the overlay
then names only what it changes (a setting, a key of a check, a new audit).

Loading is strict: an unknown key, a missing rationale, a value of the wrong type or out of its
unit's range raises :class:`PolicyError` naming the file, the section and the key, all problems
at once.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refusal_probe.audit.settings import Settings, Sourced, read_settings
from refusal_probe.errors import PolicyError
from refusal_probe.resources import DEFAULT_POLICY
from refusal_probe.stats.verdicts import Bound, Threshold

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

POLICY_VERSION = 1

#: Units a threshold can be stated in, with the range its value must lie in.
UNITS: dict[str, tuple[float, float]] = {
    "probability": (0.0, 1.0),  # rates, AUROC, fractions
    "difference": (-1.0, 1.0),  # a difference of two probabilities
    "cosine": (-1.0, 1.0),
    "nats": (0.0, math.inf),  # KL divergence, cross-entropy
    "ratio": (0.0, math.inf),
}


_BOUND_KEYS = tuple(b.key for b in Bound)
_CHECK_KEYS = {*_BOUND_KEYS, "unit", "rationale", "enabled"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class CheckPolicy:
    """The policy of one check.

    Attributes:
        id: ``<audit>.<name>``, the key the audit file asks for.
        threshold: The bar and its bound (≥ or ≤).
        unit: One of :data:`UNITS`.
        rationale: One line saying why the bar is where it is.
        enabled: ``false`` turns the check off (reported as not run, with the reason).
    """

    id: str
    threshold: Threshold
    unit: str
    rationale: str
    enabled: bool = True

    @property
    def audit(self) -> str:
        """The audit this check belongs to."""
        return self.id.split(".", 1)[0]


@dataclass(frozen=True)
class AuditPolicy:
    """One audit of the policy: a top-level table of the file.

    Attributes:
        name: The audit's name: the prefix of its checks' ids and its pytest marker.
        description: One line saying what the audit looks at (the marker's help text).
    """

    name: str
    description: str = ""


@dataclass(frozen=True)
class Policy:
    """A loaded, validated policy file (an overlay resolved onto the files it extends).

    Attributes:
        path: Where it was read from.
        sha256: Hash of the file's bytes (of an overlay: of every file it is built from).
        version: The policy format version.
        settings: Run-wide settings.
        checks: Check policies by id, in the file's order.
        audits: The audits, in the file's order (the report's order).
        files: The files read, the most basic first (one, unless the policy extends another).
    """

    path: str
    sha256: str
    version: int
    settings: Settings
    checks: dict[str, CheckPolicy] = field(default_factory=dict)
    audits: tuple[AuditPolicy, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def audit_names(self) -> tuple[str, ...]:
        """The audits' names, in the policy's order."""
        return tuple(a.name for a in self.audits)

    def check(self, check_id: str) -> CheckPolicy:
        """The policy of one check.

        Raises:
            PolicyError: The policy has no section for ``check_id`` (one line naming the check
                and the file).
        """
        try:
            return self.checks[check_id]
        except KeyError:
            audit = check_id.split(".", 1)[0]
            known = [c for c in self.checks if c.split(".", 1)[0] == audit] or list(self.checks)
            raise PolicyError(
                f"{self.path}: no section [{check_id}] for check {check_id!r}; add one with "
                f"at_least/at_most, unit and rationale (known checks: {', '.join(known)})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with every threshold resolved."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "version": self.version,
            "files": list(self.files or (self.path,)),
            "settings": self.settings.to_dict(),
            "audits": [{"name": a.name, "description": a.description} for a in self.audits],
            "checks": {
                cid: {
                    "threshold": c.threshold.value,
                    "direction": c.threshold.bound.key,
                    "unit": c.unit,
                    "rationale": c.rationale,
                    "enabled": c.enabled,
                }
                for cid, c in sorted(self.checks.items())
            },
        }




@dataclass
class _Merged:
    """The raw content of a policy and the files it extends, each value with its file."""

    version: Sourced | None = None
    settings: dict[str, Sourced] = field(default_factory=dict)
    descriptions: dict[str, Sourced] = field(default_factory=dict)
    sections: dict[str, dict[str, dict[str, Sourced]]] = field(default_factory=dict)
    section_file: dict[str, Path] = field(default_factory=dict)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file, and the files it extends.

    Raises:
        PolicyError: A file is missing or unreadable TOML, extends itself, or has any unknown key
            or bad value; the message lists every problem as ``file: [section] key: problem``.
    """
    path = Path(path)
    chain = _read_chain(path, ())
    errors: list[tuple[Path, str]] = []
    merged = _Merged()
    for file, data in chain:
        _merge(file, data, merged, errors)
    if merged.version is None:
        errors.append((chain[0][0], f"version: must be {POLICY_VERSION}, got None"))
    settings = read_settings(merged.settings, errors)
    checks: dict[str, CheckPolicy] = {}
    audits: list[AuditPolicy] = []
    for audit, sections in merged.sections.items():
        audits.append(AuditPolicy(audit, _description(audit, merged.descriptions, errors)))
        for name, section in sections.items():
            cid = f"{audit}.{name}"
            check = _check(cid, section, merged.section_file[cid], errors)
            if check is not None:
                checks[cid] = check
    if errors:
        raise PolicyError(f"invalid policy {path}:\n" + "\n".join(f"  {f}: {e}" for f, e in errors))
    hashes = [hashlib.sha256(f.read_bytes()).hexdigest() for f, _ in chain]
    sha = hashes[0] if len(hashes) == 1 else hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    return Policy(
        str(path),
        sha,
        POLICY_VERSION,
        settings,
        checks,
        tuple(audits),
        tuple(str(f) for f, _ in chain),
    )


def _read_chain(path: Path, seen: tuple[Path, ...]) -> list[tuple[Path, dict[str, Any]]]:
    """The file and every file it extends, the most basic first."""
    if not path.is_file():
        where = f"{seen[-1]}: extends: " if seen else ""
        raise PolicyError(
            f"{where}policy file {path} does not exist; pass --policy FILE or restore "
            "audits/policy.toml"
        )
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    base = data.pop("extends", None)
    if base is None:
        return [(path, data)]
    if not isinstance(base, str) or not base:
        raise PolicyError(
            f'{path}: extends: must be a file name (relative to this file) or "default", '
            f"got {base!r}"
        )
    target = DEFAULT_POLICY if base == "default" else Path(os.path.normpath(path.parent / base))
    if target.resolve() in {p.resolve() for p in (*seen, path)}:
        raise PolicyError(f"{path}: extends: {base!r} leads back to {target}; break the cycle")
    return [*_read_chain(target, (*seen, path)), (path, data)]


def _merge(file: Path, data: dict[str, Any], into: _Merged, errors: list[tuple[Path, str]]) -> None:
    """Lay one file's content over what the files it extends said."""
    for key, value in data.items():
        if key == "version":
            if value != POLICY_VERSION:
                errors.append((file, f"version: must be {POLICY_VERSION}, got {value!r}"))
            into.version = (value, file)
        elif key == "settings":
            if not isinstance(value, dict):
                errors.append((file, "settings: must be a table [settings]"))
                continue
            into.settings.update({k: (v, file) for k, v in value.items()})
        elif not isinstance(value, dict) or not _NAME.match(key):
            errors.append(
                (
                    file,
                    f"{key}: unknown key; top level holds only version, extends, [settings] and "
                    "one table per audit",
                )
            )
        else:
            _merge_audit(file, key, value, into, errors)


def _merge_audit(
    file: Path, audit: str, table: dict[str, Any], into: _Merged, errors: list[tuple[Path, str]]
) -> None:
    sections = into.sections.setdefault(audit, {})
    for name, section in table.items():
        if name == "description":
            into.descriptions[audit] = (section, file)
            continue
        if not isinstance(section, dict) or not _NAME.match(name):
            errors.append(
                (
                    file,
                    f"[{audit}] {name}: unknown key; an audit holds a description and its checks "
                    f"as tables [{audit}.<name>]",
                )
            )
            continue
        cid = f"{audit}.{name}"
        merged = sections.setdefault(name, {})
        into.section_file.setdefault(cid, file)
        if any(b in section for b in _BOUND_KEYS):  # a new bar replaces the old one, whichever side
            for b in _BOUND_KEYS:
                merged.pop(b, None)
        merged.update({k: (v, file) for k, v in section.items()})


def _description(
    audit: str, descriptions: dict[str, Sourced], errors: list[tuple[Path, str]]
) -> str:
    if audit not in descriptions:
        return ""
    text, file = descriptions[audit]
    if not isinstance(text, str) or not text.strip() or "\n" in text.strip():
        errors.append((file, f"[{audit}] description: must be one line of text, got {text!r}"))
        return ""
    return text.strip()


def _check(
    cid: str, sec: dict[str, Sourced], file: Path, errors: list[tuple[Path, str]]
) -> CheckPolicy | None:
    """Validate one merged check section; ``file`` is where the section was first given."""
    before = len(errors)

    def where(key: str) -> Path:
        return sec[key][1] if key in sec else file

    for key in sec:
        if key not in _CHECK_KEYS:
            errors.append(
                (where(key), f"[{cid}] {key}: unknown key; known: {', '.join(sorted(_CHECK_KEYS))}")
            )
    bounds = [b for b in Bound if b.key in sec]
    if len(bounds) != 1:
        got = [b.key for b in bounds] or "neither"
        errors.append(
            (
                where(bounds[-1].key) if bounds else file,
                f"[{cid}]: give exactly one of at_least or at_most (got {got})",
            )
        )
    unit = sec.get("unit", (None, file))[0]
    if unit not in UNITS:
        errors.append((where("unit"), f"[{cid}] unit: {unit!r} is not one of {', '.join(UNITS)}"))
    rationale = sec.get("rationale", (None, file))[0]
    if not isinstance(rationale, str) or not rationale.strip():
        errors.append(
            (
                where("rationale"),
                f"[{cid}] rationale: missing or empty; say in one line why the bar is there",
            )
        )
    elif "\n" in rationale.strip():
        errors.append((where("rationale"), f"[{cid}] rationale: must be one line"))
    enabled = sec.get("enabled", (True, file))[0]
    if not isinstance(enabled, bool):
        errors.append(
            (where("enabled"), f"[{cid}] enabled: must be true or false, got {enabled!r}")
        )
    value = sec[bounds[0].key][0] if len(bounds) == 1 else None
    if len(bounds) == 1:
        b = bounds[0]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            errors.append(
                (where(b.key), f"[{cid}] {b.key}: must be a finite number, got {value!r}")
            )
        elif unit in UNITS and not UNITS[unit][0] <= value <= UNITS[unit][1]:
            lo, hi = UNITS[unit]
            errors.append(
                (
                    where(b.key),
                    f"[{cid}] {b.key}: {value!r} is outside the range of unit {unit!r} [{lo:g}, "
                    f"{hi:g}]",
                )
            )
    if len(errors) > before:
        return None
    return CheckPolicy(
        cid, Threshold(float(value), bounds[0]), str(unit), str(rationale).strip(), enabled
    )
