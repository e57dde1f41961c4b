"""The audit policy: every threshold in one TOML file, each with a one-line rationale.

Layout (``audits/policy.toml``)::

    version = 1

    [settings]
    confidence = 0.95        # two-sided level of every interval

    [behaviour.harmful_refusal]
    at_least = 0.90          # or at_most = ...
    unit = "probability"
    rationale = "Why this bar."

A check is named ``<audit>.<name>``, and an audit file asks for its threshold by that id, so adding
an audit means adding a test file and its sections here; nothing in the package changes. Loading is
strict: an unknown key, a missing rationale, a value of the wrong type or out of its unit's range
raises :class:`PolicyError` naming the file, the section and the key, all problems at once.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from refusal_probe.errors import PolicyError
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

_CHECK_KEYS = {b.key for b in Bound} | {"unit", "rationale", "enabled"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Settings:
    """Run-wide settings of the audits.

    Attributes:
        confidence: Two-sided confidence level of every interval (0.5 < c < 1).
        resamples: Bootstrap resamples behind each bootstrap interval.
        max_new_tokens: Greedy generation length for the completion judge.
        batch_size: Prompts per forward pass; ``None`` (``"auto"`` in the file) chooses it from
            the free memory of the model's device (:func:`refusal_probe.model.devices.auto_batch_size`).
        selection_prompts: Validation prompts per class that score each candidate direction
            (the reference method uses 32).
        selection_layer_stride: Score candidates at every ``n``-th layer only (1: every layer).
        selection_positions: Score candidates at the last ``n`` post-instruction positions only
            (0: all of them). With the stride, this bounds the selection cost on deep models.
        monitor_target_fpr: False-positive rate on harmless validation prompts that the
            monitor's thresholds are calibrated for (its operating point).
        selection_screen: Score exactly only the ``n`` candidates that a first-order
            (attribution) estimate of their ablation effect ranks best (0: score every
            candidate, the reference procedure); see :mod:`refusal_probe.selection.screening`.
    """

    confidence: float = 0.95
    resamples: int = 1000
    max_new_tokens: int = 24
    batch_size: int | None = None
    selection_prompts: int = 32
    selection_layer_stride: int = 1
    selection_positions: int = 0
    selection_screen: int = 0
    monitor_target_fpr: float = 0.02

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (an automatic batch size reads ``"auto"``)."""
        d = asdict(self)
        d["batch_size"] = "auto" if self.batch_size is None else self.batch_size
        return d


_SETTING_RANGES: dict[str, tuple[type, float, float]] = {
    "confidence": (float, 0.5, 0.999),
    "resamples": (int, 100, 100_000),
    "max_new_tokens": (int, 1, 1024),
    "batch_size": (int, 1, 4096),
    "selection_prompts": (int, 2, 4096),
    "selection_layer_stride": (int, 1, 64),
    "selection_positions": (int, 0, 64),
    "selection_screen": (int, 0, 100_000),
    "monitor_target_fpr": (float, 0.001, 0.5),
}


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
class Policy:
    """A loaded, validated policy file.

    Attributes:
        path: Where it was read from.
        sha256: Hash of the file's bytes (reports carry it).
        version: The policy format version.
        settings: Run-wide settings.
        checks: Check policies by id.
    """

    path: str
    sha256: str
    version: int
    settings: Settings
    checks: dict[str, CheckPolicy] = field(default_factory=dict)

    def check(self, check_id: str) -> CheckPolicy:
        """The policy of one check.

        Raises:
            PolicyError: The policy has no section for ``check_id``.
        """
        try:
            return self.checks[check_id]
        except KeyError:
            raise PolicyError(
                f"{self.path}: no section [{check_id}] for check {check_id!r}; add one with "
                "at_least/at_most, unit and rationale (known checks: "
                f"{', '.join(sorted(self.checks))})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with every threshold resolved."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "version": self.version,
            "settings": self.settings.to_dict(),
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


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file.

    Raises:
        PolicyError: The file is missing or unreadable TOML, or has any unknown key or bad value;
            the message lists every problem as ``file: [section] key: problem``.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyError(
            f"policy file {path} does not exist; pass --policy FILE or restore audits/policy.toml"
        )
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    errors: list[str] = []
    version = data.pop("version", None)
    if version != POLICY_VERSION:
        errors.append(f"version: must be {POLICY_VERSION}, got {version!r}")
    settings = _settings(data.pop("settings", {}), errors)
    checks: dict[str, CheckPolicy] = {}
    for audit, table in data.items():
        if not isinstance(table, dict) or not _NAME.match(audit):
            errors.append(
                f"{audit}: unknown key; top level holds only version, [settings] and one table per "
                "audit"
            )
            continue
        for name, section in table.items():
            cid = f"{audit}.{name}"
            if not isinstance(section, dict) or not _NAME.match(name):
                errors.append(f"[{audit}] {name}: unknown key; a check is a table [{audit}.<name>]")
                continue
            check = _check(cid, section, errors)
            if check is not None:
                checks[cid] = check
    if errors:
        raise PolicyError(f"invalid policy {path}:\n" + "\n".join(f"  {path}: {e}" for e in errors))
    return Policy(str(path), hashlib.sha256(raw).hexdigest(), POLICY_VERSION, settings, checks)


def _settings(table: Any, errors: list[str]) -> Settings:
    if not isinstance(table, dict):
        errors.append("settings: must be a table [settings]")
        return Settings()
    values: dict[str, Any] = {}
    for key, val in table.items():
        if key not in _SETTING_RANGES:
            errors.append(f"[settings] {key}: unknown key; known: {', '.join(_SETTING_RANGES)}")
            continue
        if key == "batch_size" and val == "auto":
            values[key] = None
            continue
        kind, lo, hi = _SETTING_RANGES[key]
        ok_type = isinstance(val, int) if kind is int else isinstance(val, (int, float))
        if isinstance(val, bool) or not ok_type:
            auto = ' or "auto"' if key == "batch_size" else ""
            errors.append(
                f"[settings] {key}: must be {'an integer' if kind is int else 'a number'}{auto}, "
                f"got {val!r}"
            )
        elif not lo <= val <= hi:
            errors.append(f"[settings] {key}: {val!r} is outside [{lo:g}, {hi:g}]")
        else:
            values[key] = kind(val)
    return Settings(**values)


def _check(cid: str, sec: dict[str, Any], errors: list[str]) -> CheckPolicy | None:
    before = len(errors)
    for key in sec:
        if key not in _CHECK_KEYS:
            errors.append(f"[{cid}] {key}: unknown key; known: {', '.join(sorted(_CHECK_KEYS))}")
    bounds = [b for b in Bound if b.key in sec]
    if len(bounds) != 1:
        got = [b.key for b in bounds] or "neither"
        errors.append(f"[{cid}]: give exactly one of at_least or at_most (got {got})")
    unit = sec.get("unit")
    if unit not in UNITS:
        errors.append(f"[{cid}] unit: {unit!r} is not one of {', '.join(UNITS)}")
    rationale = sec.get("rationale")
    if not isinstance(rationale, str) or not rationale.strip():
        errors.append(f"[{cid}] rationale: missing or empty; say in one line why the bar is there")
    elif "\n" in rationale.strip():
        errors.append(f"[{cid}] rationale: must be one line")
    enabled = sec.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(f"[{cid}] enabled: must be true or false, got {enabled!r}")
    value = sec.get(bounds[0].key) if len(bounds) == 1 else None
    if len(bounds) == 1:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            errors.append(f"[{cid}] {bounds[0].key}: must be a finite number, got {value!r}")
        elif unit in UNITS and not UNITS[unit][0] <= value <= UNITS[unit][1]:
            lo, hi = UNITS[unit]
            errors.append(
                f"[{cid}] {bounds[0].key}: {value!r} is outside the range of unit {unit!r} "
                f"[{lo:g}, {hi:g}]"
            )
    if len(errors) > before:
        return None
    return CheckPolicy(
        cid, Threshold(float(value), bounds[0]), str(unit), str(rationale).strip(), enabled
    )
