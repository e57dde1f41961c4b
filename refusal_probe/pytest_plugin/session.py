"""The plugin's state: resolved options, and the one session object that collects what ran.

State lives in ``config.stash`` under :data:`SESSION_KEY` (never as attributes on ``config``); the
checks a test records live in its item's stash under :data:`ITEM_CHECKS_KEY` until its report is
made, and travel on the report (``report.audit_checks``, with ``report.audit_checkpoint`` naming
the checkpoint), so they reach the controller under pytest-xdist too. What each checkpoint's
tests collected is kept apart in a :class:`CheckpointRun`, one report each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from refusal_probe.audit.checkpoints import Checkpoint
from refusal_probe.audit.inputs import RunInputs
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.policy import Policy, load_policy
from refusal_probe.audit.required import RequiredChecks
from refusal_probe.audit.run import AuditRun
from refusal_probe.report.record import AuditRecord
from refusal_probe.report.render import model_slug


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
        unmet: Required checks that did not run (``--require-checks``), ``"<id> (<why>)"``.
    """

    checkpoint: Checkpoint
    checks: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    record: AuditRecord | None = None
    report_path: Path | None = None
    report_error: str | None = None
    unmet: list[str] = field(default_factory=list)


@dataclass
class AuditSession:
    """One pytest run's audit state (registered once in ``pytest_configure``).

    Attributes:
        options: The resolved options (``options.model`` is the first checkpoint).
        checkpoints: The checkpoints audited, in order (one, or a series).
        required: The checks the run must run (``--require-checks``), or ``None``.
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
    required: RequiredChecks | None = None
    started: float = field(default_factory=time.time)
    runs: dict[str, CheckpointRun] = field(default_factory=dict)
    audit_items: dict[str, str] = field(default_factory=dict)
    collected_audits: set[str] = field(default_factory=set)
    aborted: str | None = None
    trend_path: Path | None = None
    trend_error: str | None = None
    _policy: Policy | None = None
    _inputs: RunInputs | None = None
    _runs: dict[str, AuditRun] = field(default_factory=dict)

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
            self._inputs = RunInputs(
                self.options, on_fatal=self.abort, test_prompts=self.policy.settings.test_prompts
            )
        return self._inputs

    def audit_run(self, spec: str) -> AuditRun:
        """The shared, lazily computed results of one checkpoint (one per process)."""
        if spec not in self._runs:
            # A checkpoint of a series that cannot be loaded errors its own tests; the others
            # still run. A single model that cannot be loaded stops the run.
            on_fatal = None if self.series else self.abort
            found = self.inputs.runs.get(spec)  # opened already as the baseline: adopt it
            if found is None:
                found = AuditRun(
                    spec, self.options, self.policy, inputs=self.inputs, on_fatal=on_fatal
                )
                self.inputs.runs[spec] = found
            found.audits = frozenset(self.audit_items.values())
            self._runs[spec] = found
        return self._runs[spec]

    def loaded_run(self, spec: str) -> AuditRun | None:
        """The checkpoint's run if this process has made it (never makes it)."""
        return self._runs.get(spec)

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
