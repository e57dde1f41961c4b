"""The options of one audit run, and how they load a model.

:class:`AuditOptions` is what the plugin resolves from the command line and the ini file, and what
a notebook passes to :class:`~refusal_probe.audit.run.AuditRun` (every field but the model has a
default). :func:`load_options` turns them into the loader's options.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from refusal_probe.audit.policy import DEFAULT_POLICY, Policy
from refusal_probe.model.devices import parse_device_map
from refusal_probe.model.loading import LoadOptions, default_cache_dir


@dataclass(frozen=True)
class AuditOptions:
    """Every option of an audit run, resolved (command line over ini over default).

    Attributes:
        model: Spec of the audited model.
        baseline: Spec of a parent checkpoint, or the audit.json (or run folder) of an earlier run.
        policy: The policy file.
        policy_explicit: Whether ``--policy`` was given (then a bad file is a usage error at once).
        report_dir: Where run folders are written.
        write_report: ``False`` under ``--no-report``.
        device: Torch device.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        seed: Seed of every random choice (bootstrap, pairing).
        cache_dir: Disk cache of activations and shared results.
        trust_remote_code: Allow a checkpoint's own code to run.
        allow_pickle: Allow pickle weight files.
        prompts: A labelled prompt set to audit with (a folder in the fixtures' schema, a file, a
            ``datasets`` folder or ``hf:<name>[:<config>][@<split>]``); see
            :mod:`refusal_probe.audit.prompt_inputs`.
        harmful: A source read as the harmful side (same forms as ``prompts``).
        harmless: A source read as the harmless side.
        held_out: The given sets are the test split only; the direction is fit and selected on
            the model's default set.
        text_field: Column holding the request (overrides the recognised layout).
        label_field: Column saying harmful or harmless.
        category_field: Column holding the category.
        strict: Inconclusive verdicts count as failures.
        device_map: ``--device-map``: a strategy (``auto``, ``balanced`` ...) or a JSON file that
            spreads the model over several devices (then ``device`` is not used), or ``None``.
        budget: ``--budget``: seconds the checkpoint's audit may take; a result that cannot
            finish in them is stopped and its checks read inconclusive (``None``: unbounded).
    """

    model: str
    baseline: str | None = None
    policy: Path = DEFAULT_POLICY
    policy_explicit: bool = False
    report_dir: Path = Path("reports")
    write_report: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    cache_dir: Path = field(default_factory=default_cache_dir)
    trust_remote_code: bool = False
    allow_pickle: bool = False
    prompts: str | None = None
    strict: bool = False
    device_map: str | None = None
    harmful: str | None = None
    harmless: str | None = None
    held_out: bool = False
    text_field: str | None = None
    label_field: str | None = None
    category_field: str | None = None
    budget: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        for k in _UNSET_OMITTED:  # records of runs without these read as they always did
            if not d[k]:
                del d[k]
        return d

    def sha256(self, policy: Policy) -> str:
        """Hash of what decides the numbers: options that matter and the resolved policy."""
        keep = {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("report_dir", "write_report", "policy_explicit")
        }
        resolved = policy.to_dict()
        payload = json.dumps(
            {"options": keep, "policy": resolved["checks"], "settings": resolved["settings"]},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


#: Options left out of :meth:`AuditOptions.to_dict` while unset (absent from older records).
_UNSET_OMITTED = (
    "device_map", "harmful", "harmless", "held_out", "text_field", "label_field",
    "category_field", "budget",
)  # fmt: skip


def load_options(o: AuditOptions) -> LoadOptions:
    """How the run's options load a model: device or device map, dtype, the safety opt-ins."""
    return LoadOptions(
        device=o.device,
        dtype=o.dtype,
        trust_remote_code=o.trust_remote_code,
        allow_pickle=o.allow_pickle,
        cache_dir=str(o.cache_dir),
        device_map=parse_device_map(o.device_map) if o.device_map else None,
    )
