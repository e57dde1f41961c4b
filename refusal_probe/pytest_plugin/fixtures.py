"""Fixtures of the audit suite.

``findings`` is the checkpoint's :class:`~refusal_probe.audit.run.AuditRun`, session-scoped and
lazy: it computes nothing when created, and each shared result (the model's behaviour, the
selected direction, its validation, the baseline's) is computed the first time an audit asks for
it, then reused by every other audit file in the run and kept in the disk cache for the next run.
``audit`` is per test: it turns a measured interval into a verdict against the policy and records
it for the report.

Both depend on ``checkpoint``, the spec of the model under audit. With several checkpoints
(``--model A --model B``, ``--models-file``) the plugin parametrizes ``checkpoint`` at session
scope, so every audit test runs once per checkpoint, pytest runs one checkpoint's tests together,
and each checkpoint's model is loaded once and released when its tests are done.

An audit file is therefore small::

    @pytest.mark.behaviour
    def test_refuses_harmful_requests(audit, findings):
        \"\"\"Refusal rate on harmful test prompts.\"\"\"
        b = findings.behaviour()
        audit.check("behaviour.harmful_refusal", b.harmful, figures=[b.figure()])
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from refusal_probe.audit.baseline import Baseline
from refusal_probe.audit.checks import check_entry
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.policy import Policy
from refusal_probe.audit.run import AuditRun
from refusal_probe.errors import BudgetSpent
from refusal_probe.pytest_plugin.session import ITEM_CHECKS_KEY, SESSION_KEY, AuditSession
from refusal_probe.report.record import Figure
from refusal_probe.stats.intervals import Interval
from refusal_probe.stats.sequential import Stopping
from refusal_probe.stats.verdicts import Decision, Verdict, decide


def _session(config: pytest.Config) -> AuditSession:
    return config.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def audit_options(pytestconfig: pytest.Config) -> AuditOptions:
    """The resolved options of this run."""
    return _session(pytestconfig).options


@pytest.fixture(scope="session")
def policy(pytestconfig: pytest.Config) -> Policy:
    """The loaded policy (thresholds and settings)."""
    return _session(pytestconfig).policy


@pytest.fixture(scope="session")
def checkpoint(request: pytest.FixtureRequest) -> str:
    """The spec of the checkpoint under audit (a parameter when the run audits several)."""
    return str(getattr(request, "param", None) or _session(request.config).options.model)


@pytest.fixture(scope="session")
def findings(pytestconfig: pytest.Config, checkpoint: str) -> Iterator[AuditRun]:
    """The checkpoint's :class:`~refusal_probe.audit.run.AuditRun` (once per xdist worker).

    In a series the model is released when pytest moves on to the next checkpoint.
    """
    session = _session(pytestconfig)
    found = session.audit_run(checkpoint)
    yield found
    if session.series:
        found.release()


@pytest.fixture(scope="session")
def baseline(findings: AuditRun) -> Baseline:
    """The baseline (a parent model, or an earlier audit record); skips without ``--baseline``."""
    if not findings.options.baseline:
        pytest.skip(
            "no --baseline given; pass --baseline SPEC_OR_AUDIT_JSON to run the fine-tune audit"
        )
    return findings.baseline()


@pytest.fixture
def audit(request: pytest.FixtureRequest, checkpoint: str) -> Auditor:
    """Judge a measured figure against the policy and record it for the checkpoint's report."""
    session = _session(request.config)
    return Auditor(request.node, session)


class Auditor:
    """Records the checks of one test item and fails the test when a check fails."""

    def __init__(self, item: pytest.Item, session: AuditSession) -> None:
        """Bind to a test item and the run's session."""
        self.item = item
        self.session = session
        item.stash.setdefault(ITEM_CHECKS_KEY, [])

    def threshold(self, check_id: str) -> float:
        """The policy's bar for ``check_id`` (to draw on a figure)."""
        return self.session.policy.check(check_id).threshold.value

    def check(
        self,
        check_id: str,
        measured: Interval,
        *,
        title: str | None = None,
        figures: Sequence[Figure] = (),
        details: dict[str, Any] | None = None,
        failed: str | None = None,
        sequential: Stopping | None = None,
    ) -> Decision:
        """Judge ``measured`` against the policy's threshold for ``check_id`` and record it.

        Args:
            check_id: ``<audit>.<name>``, a section of the policy file.
            measured: The figure and its interval.
            title: What is checked, in words (default: the test's docstring, first line).
            figures: Evidence for the report.
            details: Further numbers behind the check (JSON data).
            failed: Fail the check for this reason, whatever ``measured`` says.
            sequential: How a sequential check stopped drawing prompts (recorded as given).

        Returns:
            The judgement (a passing or inconclusive one; a failing one fails the test).
        """
        cp = self.session.policy.check(check_id)
        if not cp.enabled:
            pytest.skip(f"{check_id} is disabled in {self.session.policy.path} (enabled = false)")
        if not isinstance(measured, Interval):
            raise TypeError(
                f"{check_id}: cannot judge {type(measured).__name__}; pass an Interval "
                "(Interval.exact(value) for a figure without sampling error)"
            )
        est = measured
        title = title or _doc_title(self.item) or check_id
        strict = self.session.options.strict
        j = decide(est, cp.threshold, strict=strict, name=title.lower(), failed=failed)
        entry = check_entry(
            check_id, cp, title, j, est, nodeid=self.item.nodeid, figures=figures,
            details=details, sequential=sequential,
        )  # fmt: skip
        self.item.stash[ITEM_CHECKS_KEY].append(entry)
        if j.verdict is Verdict.FAIL:
            pytest.fail(f"{check_id}: {j.message}", pytrace=False)
        return j


def ran_out(
    item: pytest.Item, report: Any, session: AuditSession, check_id: str, exc: BudgetSpent
) -> None:
    """A test whose result ran out of the time budget: its check is inconclusive, with the reason.

    In setup (a fixture ran out) the body cannot run: the report reads skipped, the check kept.
    """
    if "audit" not in getattr(item, "fixturenames", ()) or check_id not in session.policy.checks:
        return
    try:
        Auditor(item, session).check(check_id, Interval.nothing(method="time budget spent"))
    except pytest.fail.Exception:  # --strict-verdicts: inconclusive fails
        return
    finally:
        entry = item.stash[ITEM_CHECKS_KEY][-1]
        entry["message"], entry["details"] = f"inconclusive: {exc}", {"reason": str(exc)}
    report.outcome = "passed" if report.when == "call" else "skipped"
    report.longrepr = None if report.passed else (str(item.path), 0, f"Skipped: {exc}")


def _doc_title(item: pytest.Item) -> str:
    fn = getattr(item, "function", None)
    doc = inspect.getdoc(fn) if fn is not None else None
    return doc.strip().splitlines()[0].rstrip(".") if doc else ""
