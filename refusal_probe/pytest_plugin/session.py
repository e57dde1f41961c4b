"""The plugin's state: resolved options, and the one session object that collects what ran.

State lives in ``config.stash`` under :data:`SESSION_KEY` (never as attributes on ``config``); the
checks a test records live in its item's stash under :data:`ITEM_CHECKS_KEY` until its report is
made, and travel on the report (``report.audit_checks``, with ``report.audit_checkpoint`` naming
the checkpoint), so they reach the controller under pytest-xdist too. What each checkpoint's
tests collected is kept apart in a :class:`CheckpointRun`, one report each.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from refusal_probe.audit.policy import Policy, load_policy
from refusal_probe.pytest_plugin.checkpoints import Checkpoint
from refusal_probe.report.render import model_slug

if TYPE_CHECKING:
    from refusal_probe.pytest_plugin.findings import Findings
    from refusal_probe.pytest_plugin.inputs import RunInputs
    from refusal_probe.report.record import AuditRecord


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
        device_map: ``--device-map``: a strategy (``auto``, ``balanced`` ...) or a JSON file that
            spreads the model over several devices (then ``device`` is not used), or ``None``.
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
    device_map: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        if d["device_map"] is None:  # records of single-device runs read as they always did
            del d["device_map"]
        return d

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
class CheckpointRun:
    """What the tests of one checkpoint collected, and the report written from it.

    Attributes:
        checkpoint: The checkpoint.
        checks: Check records (as dicts) from its test reports, in report order.
        not_run: Its checks and audits that did not run (dicts of :class:`NotRun` fields).
        context: Model identity, data summary and artifacts reported by its tests.
        record: The audit record built at the end (the trend page reads it).
        report_path: The run folder written at the end, if any.
        report_error: Why no report was written, if one should have been.
    """

    checkpoint: Checkpoint
    checks: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    record: AuditRecord | None = None
    report_path: Path | None = None
    report_error: str | None = None


@dataclass
class AuditSession:
    """One pytest run's audit state (registered once in ``pytest_configure``).

    Attributes:
        options: The resolved options (``options.model`` is the first checkpoint).
        checkpoints: The checkpoints audited, in order (one, or a series).
        started: Wall-clock start (seconds since the epoch).
        runs: What each checkpoint's tests collected, by spec, in checkpoint order.
        audit_items: Node id → audit name of every selected audit test.
        collected_audits: Audits that have a test in the suite.
        aborted: Why the run was stopped before its end (no report is written then).
        trend_path: The trend page's folder, written at the end of a series.
        trend_error: Why no trend page was written, if one should have been.
    """

    options: AuditOptions
    checkpoints: tuple[Checkpoint, ...] = ()
    started: float = field(default_factory=time.time)
    runs: dict[str, CheckpointRun] = field(default_factory=dict)
    audit_items: dict[str, str] = field(default_factory=dict)
    collected_audits: set[str] = field(default_factory=set)
    aborted: str | None = None
    trend_path: Path | None = None
    trend_error: str | None = None
    _policy: Policy | None = None
    _inputs: RunInputs | None = None
    _findings: dict[str, Findings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.checkpoints:
            self.checkpoints = (Checkpoint(self.options.model, model_slug(self.options.model)),)
        for c in self.checkpoints:
            self.runs.setdefault(c.spec, CheckpointRun(c))

    @property
    def series(self) -> bool:
        """Whether this run audits several checkpoints (parametrized tests, a trend page)."""
        return len(self.checkpoints) > 1

    @property
    def policy(self) -> Policy:
        """The policy, loaded on first use (raises :class:`PolicyError` if it is invalid)."""
        if self._policy is None:
            self._policy = load_policy(self.options.policy)
        return self._policy

    @property
    def inputs(self) -> RunInputs:
        """What the checkpoints share: the prompt sets and the baseline, each opened once."""
        if self._inputs is None:
            from refusal_probe.pytest_plugin.inputs import RunInputs

            self._inputs = RunInputs(self.options, on_fatal=self.abort)
        return self._inputs

    def findings_for(self, spec: str) -> Findings:
        """The shared, lazily computed results of one checkpoint (one per process)."""
        if spec not in self._findings:
            from refusal_probe.pytest_plugin.findings import Findings

            # A checkpoint of a series that cannot be loaded errors its own tests; the others
            # still run. A single model that cannot be loaded stops the run.
            on_fatal = None if self.series else self.abort
            options = replace(self.options, model=spec)
            found = self.inputs.known.get(spec)  # opened already as the baseline: adopt it
            if found is None:
                found = Findings(options, self.policy, on_fatal=on_fatal, inputs=self.inputs)
                self.inputs.known[spec] = found
            else:
                found.options, found._on_fatal = options, on_fatal
            found.wanted = set(self.audit_items.values())
            self._findings[spec] = found
        return self._findings[spec]

    def loaded_findings(self, spec: str) -> Findings | None:
        """The checkpoint's findings if this process has made them (never makes them)."""
        return self._findings.get(spec)

    @property
    def findings(self) -> Findings:
        """The findings of the first (usually the only) checkpoint."""
        return self.findings_for(self.checkpoints[0].spec)

    def run_for(self, spec: str) -> CheckpointRun:
        """What the tests of the checkpoint ``spec`` collected."""
        if spec not in self.runs:  # not a checkpoint of this run: keep it anyway, apart
            self.runs[spec] = CheckpointRun(Checkpoint(spec, model_slug(spec)))
        return self.runs[spec]

    @property
    def checks(self) -> list[dict[str, Any]]:
        """Every check of every checkpoint."""
        return [c for r in self.runs.values() for c in r.checks]

    def abort(self, reason: str) -> None:
        """Stop the whole run with a usage error: nothing sensible can run, so no report."""
        self.aborted = reason
        pytest.exit(f"refusal-probe: {reason}", returncode=pytest.ExitCode.USAGE_ERROR)


SESSION_KEY = pytest.StashKey[AuditSession]()
#: Checks recorded by the ``audit`` fixture of one test item.
ITEM_CHECKS_KEY = pytest.StashKey[list]()
