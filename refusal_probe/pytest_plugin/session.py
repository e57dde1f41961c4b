"""The plugin's state: resolved options, and the one session object that collects what ran.

State lives in ``config.stash`` under :data:`SESSION_KEY` (never as attributes on ``config``); the
checks a test records live in its item's stash under :data:`ITEM_CHECKS_KEY` until its report is
made, and travel on the report (``report.audit_checks``), so they reach the controller under
pytest-xdist too.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from refusal_probe.policy import Policy, load_policy

if TYPE_CHECKING:
    from refusal_probe.pytest_plugin.findings import Findings


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
        prompts: A prompt folder to audit with instead of the shipped fixtures.
        strict: Inconclusive verdicts count as failures.
    """

    model: str
    baseline: str | None
    policy: Path
    policy_explicit: bool
    report_dir: Path
    write_report: bool
    device: str
    dtype: str
    seed: int
    cache_dir: Path
    trust_remote_code: bool
    allow_pickle: bool
    prompts: Path | None
    strict: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def sha256(self, policy: Policy) -> str:
        """Hash of what decides the numbers: options that matter and the resolved policy."""
        keep = {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("report_dir", "write_report", "policy_explicit")
        }
        payload = json.dumps(
            {
                "options": keep,
                "policy": policy.to_dict()["checks"],
                "settings": policy.to_dict()["settings"],
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class AuditSession:
    """One pytest run's audit state (registered once in ``pytest_configure``).

    Attributes:
        options: The resolved options.
        started: Wall-clock start (seconds since the epoch).
        checks: Check records (as dicts) from test reports, in report order.
        not_run: Checks and audits that did not run (dicts of :class:`NotRun` fields).
        context: Model identity, data summary and artifacts reported by the tests.
        audit_items: Node id → audit name of every selected audit test.
        aborted: Why the run was stopped before its end (no report is written then).
        report_path: The run folder written at the end, if any.
    """

    options: AuditOptions
    started: float = field(default_factory=time.time)
    checks: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    audit_items: dict[str, str] = field(default_factory=dict)
    collected_audits: set[str] = field(default_factory=set)
    aborted: str | None = None
    report_path: Path | None = None
    report_error: str | None = None
    _policy: Policy | None = None
    _findings: Findings | None = None

    @property
    def policy(self) -> Policy:
        """The policy, loaded on first use (raises :class:`PolicyError` if it is invalid)."""
        if self._policy is None:
            self._policy = load_policy(self.options.policy)
        return self._policy

    @property
    def findings(self) -> Findings:
        """The shared, lazily computed results of this run (one per process)."""
        if self._findings is None:
            from refusal_probe.pytest_plugin.findings import Findings

            self._findings = Findings(self.options, self.policy, on_fatal=self.abort)
        return self._findings

    def abort(self, reason: str) -> None:
        """Stop the whole run with a usage error: nothing sensible can run, so no report."""
        self.aborted = reason
        pytest.exit(f"refusal-probe: {reason}", returncode=pytest.ExitCode.USAGE_ERROR)


SESSION_KEY = pytest.StashKey[AuditSession]()
#: Checks recorded by the ``audit`` fixture of one test item.
ITEM_CHECKS_KEY = pytest.StashKey[list]()
