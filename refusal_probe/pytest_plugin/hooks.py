"""The session object's hooks: preflight, verdict status, pytest-html extras, summary, report.

Checks travel on test reports (``report.audit_checks``, and ``report.audit_checkpoint`` names
the checkpoint they belong to), so the controller of a pytest-xdist run sees the workers' checks;
workers never write reports. The report folders are written in ``pytest_sessionfinish`` (before
the terminal summary, which then names them): one per checkpoint, and for a series of
checkpoints a trend page beside them.

A series parametrizes the ``checkpoint`` fixture at session scope (``test_x[<label>]``), marks
each test ``xdist_group(<label>)`` and, under ``-n N --dist loadgroup``, schedules by checkpoint
(:mod:`refusal_probe.pytest_plugin.xdist`), so each checkpoint runs on one worker, loaded once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _pytest.junitxml import xml_key  # the LogXML that record_testsuite_property writes to

from refusal_probe.audit.inputs import missing_checks, preflight
from refusal_probe.audit.required import NOT_APPLICABLE, unmet
from refusal_probe.errors import BudgetSpent, RefusalProbeError
from refusal_probe.pytest_plugin.fixtures import ran_out
from refusal_probe.pytest_plugin.record import build_record, save_record
from refusal_probe.pytest_plugin.session import ITEM_CHECKS_KEY, AuditSession, CheckpointRun
from refusal_probe.pytest_plugin.terminal import terminal_progress
from refusal_probe.report.ci import (
    RunOutcome,
    check_properties,
    environment,
    html_extras,
    suite_properties,
)
from refusal_probe.report.render import check_writable, model_slug
from refusal_probe.report.trend import SeriesItem, build_trend, write_trend
from refusal_probe.stats.verdicts import Bound


def is_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker."""
    return hasattr(config, "workerinput")


def audit_of(item: pytest.Item, audits: Sequence[str]) -> str | None:
    """The audit a test belongs to: its marker among the policy's ``audits``."""
    for name in audits:
        if item.get_closest_marker(name) is not None:
            return name
    return None


def check_id_of(nodeid: str, audit: str) -> str:
    """The check id a test stands for when it did not run: ``<audit>.<test name>``."""
    name = nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
    return f"{audit}.{name.removeprefix('test_')}"


def checkpoint_of(item: pytest.Item, session: AuditSession) -> str:
    """The spec of the checkpoint a test audits: its ``checkpoint`` parameter, or the only one."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "checkpoint" in callspec.params:
        return str(callspec.params["checkpoint"])
    return session.checkpoints[0].spec


class AuditHooks:
    """Hook implementations bound to one run's :class:`AuditSession`."""

    def __init__(self, config: pytest.Config, session: AuditSession) -> None:
        """Bind to the run's config and session state."""
        self.config = config
        self.session = session
        self._selected: dict[str, str] = {}
        self._checkpoint: dict[str, str] = {}
        self._reported: set[str] = set()
        self.audits = session.policy.audit_names  # the registry: the policy's audits, in order

    # --- collection --------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """In a series, run every test that audits a checkpoint once per checkpoint.

        Session scope lets pytest group one checkpoint's tests together, so each model is loaded
        once (and released before the next); the ``xdist_group`` mark does the same across
        pytest-xdist workers under ``--dist loadgroup``.
        """
        if self.session.series and "checkpoint" in metafunc.fixturenames:
            metafunc.parametrize(
                "checkpoint",
                [
                    pytest.param(c.spec, id=c.label, marks=pytest.mark.xdist_group(c.label))
                    for c in self.session.checkpoints
                ],
                indirect=True,
                scope="session",
            )

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """Under ``--dist loadgroup``, keep each checkpoint of a series on one xdist worker."""
        if not self.session.series or config.getvalue("dist") != "loadgroup":
            return None
        from refusal_probe.pytest_plugin.xdist import CheckpointScheduling

        return CheckpointScheduling(config, log, [c.label for c in self.session.checkpoints])

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Note the selected audit tests; if there are any, check the inputs before running them."""
        for item in items:
            audit = audit_of(item, self.audits)
            if audit:
                self._selected[item.nodeid] = audit
                self._checkpoint[item.nodeid] = checkpoint_of(item, self.session)
                self.session.collected_audits.add(audit)
        self.session.audit_items = dict(self._selected)
        if self._selected:
            s = self.session
            try:
                missing_checks(s.policy, {Path(str(item.path)) for item in items})
                if s.options.write_report:
                    check_writable(s.options.report_dir, self._report_slugs())
                checkpoints = [(c.spec, c.origin) for c in s.checkpoints]
                unmet = preflight(s.options, checkpoints, s.inputs, set(self._selected.values()))
            except RefusalProbeError as exc:
                self.session.abort(str(exc))
            for item in (i for i in items if self._selected.get(i.nodeid) in unmet):
                item.add_marker(pytest.mark.skip(reason=unmet[self._selected[item.nodeid]]))

    def _report_slugs(self) -> list[str]:
        """The model folders the run's reports go to (as :func:`save_record` names them)."""
        checkpoints = self.session.checkpoints
        if self.session.series:
            return [c.label for c in checkpoints]
        return [model_slug(c.spec) for c in checkpoints]

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        """Deselected audit tests are reported as not run."""
        for item in items:
            audit = audit_of(item, self.audits)
            if audit:
                self.session.collected_audits.add(audit)
                self.session.run_for(checkpoint_of(item, self.session)).not_run.append(
                    _not_run(item.nodeid, audit, "deselected", "deselected (-k/-m)")
                )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        """Show the engine's progress on the terminal while the tests run."""
        with terminal_progress(self.config):
            return (yield)

    # --- per test ----------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        """Put the item's checks (and the shared context) on its report, with pytest-html extras."""
        report = yield
        if call.excinfo and call.excinfo.errisinstance(BudgetSpent) and call.when != "teardown":
            check_id = check_id_of(item.nodeid, audit_of(item, self.audits) or "")
            ran_out(item, report, self.session, check_id, call.excinfo.value)
        checks = list(item.stash.get(ITEM_CHECKS_KEY, []))
        # A test without an audit marker still belongs to the audit of the checks it records.
        audit = (
            self._selected.get(item.nodeid)
            or audit_of(item, self.audits)
            or next((c["audit"] for c in checks), None)
        )
        if call.excinfo is not None and call.excinfo.errisinstance(RefusalProbeError):
            # Our errors name the fix in one line; the traceback only under --full-trace or -vv.
            if not (self.config.option.fulltrace or self.config.get_verbosity() >= 2):
                report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
        if not audit:
            return report
        spec = self._checkpoint.get(item.nodeid) or checkpoint_of(item, self.session)
        report.audit_name = audit
        report.audit_checkpoint = spec
        # A test that needs the baseline cannot apply to a run without one (not a lost check).
        na = report.skipped and "baseline" in getattr(item, "fixturenames", ())
        report.audit_not_applicable = na and not self.session.options.baseline
        if report.when == "call" or (report.when == "setup" and checks):  # ran out of time
            report.audit_checks = checks
            for c in checks:  # junitxml writes the properties of the item (teardown report)
                item.user_properties += check_properties(c)
            found = self.session.loaded_run(spec)
            if checks and found is not None:
                report.audit_context = found.context()
            if checks:
                report.extras = list(getattr(report, "extras", [])) + html_extras(checks)
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> Any:
        """A passing test with an inconclusive check shows as ``I`` / ``INCONCLUSIVE``."""
        if report.when == "call" and report.passed:
            if any(c["verdict"] == "inconclusive" for c in getattr(report, "audit_checks", ())):
                return "inconclusive", "I", ("INCONCLUSIVE", {"yellow": True})
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect checks, skips and errors of audit tests (on the controller only)."""
        audit = getattr(report, "audit_name", None)
        if audit is None or is_worker(self.config):
            return
        self._reported.add(report.nodeid)
        self.session.collected_audits.add(audit)  # under xdist the controller collects nothing
        spec = getattr(report, "audit_checkpoint", None) or self.session.checkpoints[0].spec
        run = self.session.run_for(spec)
        ctx = getattr(report, "audit_context", None)
        if ctx:
            _merge(run.context, ctx)
        checks = getattr(report, "audit_checks", [])
        for c in checks:
            run.checks.append({**c, "duration_s": round(report.duration, 3)})
        if report.skipped and not checks:
            kind = NOT_APPLICABLE if getattr(report, "audit_not_applicable", False) else "skipped"
            run.not_run.append(_not_run(report.nodeid, audit, kind, _skip_reason(report)))
        elif report.failed and not any(c["verdict"] == "fail" for c in checks):
            error = f"error in {report.when}: {_error_line(report)}"
            run.not_run.append(_not_run(report.nodeid, audit, "error", error))

    # --- end of run --------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)  # before junitxml and pytest-html write their files
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write each checkpoint's report folder, and a series' trend page (controller only).

        Nothing is written by workers, after an aborted run, or when no check ran; a checkpoint
        of a series without checks gets no report and shows as missing on the trend page.
        Required checks that did not run turn a green exit into exit code 1.
        """
        s = self.session
        if is_worker(self.config) or s.aborted:
            return
        for nodeid, audit in self._selected.items():
            if nodeid not in self._reported:
                reason = "the run stopped before this test (-x, --maxfail or an interrupt)"
                s.run_for(self._checkpoint[nodeid]).not_run.append(
                    _not_run(nodeid, audit, "not_reached", reason)
                )
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or bool(
            session.shouldstop or session.shouldfail  # -x / --maxfail stop the run early
        )
        for run in s.runs.values():
            ran = (c["id"] for c in run.checks)
            run.unmet = [str(u) for u in unmet(s.required, ran, run.not_run)]
            if not run.checks:
                continue
            try:
                now = time.time()
                run.record = build_record(self.config, s, run, int(exitstatus), now, interrupted)
                if s.options.write_report:
                    run.report_path = save_record(run.record, s, run)
            except (RefusalProbeError, OSError) as exc:
                run.report_error = str(exc)
                # The report is what the run is for: losing it is never a green exit.
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if any(r.unmet for r in s.runs.values()) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a check that did not run
        if s.series and s.options.write_report and s.checks:
            self._write_trend()
        _publish(self.config, s)

    def _write_trend(self) -> None:
        s = self.session
        items = [
            SeriesItem(
                r.checkpoint.label,
                r.checkpoint.spec,
                r.record,
                r.report_path,
                r.report_error or ("" if r.checks else _no_checks_reason(r)),
            )
            for r in s.runs.values()
        ]
        try:
            s.trend_path = write_trend(build_trend(items), s.options.report_dir)
        except RefusalProbeError as exc:
            s.trend_error = str(exc)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """List every check with value, interval, threshold and verdict; name the reports."""
        s = self.session
        quiet = is_worker(self.config) or s.aborted or self.config.option.collectonly
        if quiet or not any(r.checks or r.not_run for r in s.runs.values()):
            return
        tr = terminalreporter
        tr.section("refusal-probe audit")
        width = max((len(c["id"]) for c in s.checks), default=10)
        for run in s.runs.values():
            if s.series:
                c = run.checkpoint
                tr.line(f"{c.label} ({c.spec})", bold=True)
            _summarize(tr, run, width, alone=not s.series)
        for run in (r for r in s.runs.values() if r.unmet):
            label = f" of {run.checkpoint.label}" if s.series else ""
            tr.line(f"required checks{label} that did not run (exit 1):", red=True, bold=True)
            for u in run.unmet:
                tr.line(f"  {u}", red=True)
        if s.trend_path is not None:
            tr.line(f"trend: {s.trend_path / 'index.html'}", bold=True)
        elif s.trend_error:
            tr.line(f"no trend page written: {s.trend_error}", red=True)


def _summarize(tr: Any, run: CheckpointRun, width: int, alone: bool) -> None:
    """One checkpoint's checks, not-run entries and report."""
    for c in run.checks:
        verdict = c["verdict"].upper()
        markup = {"PASS": {"green": True}, "FAIL": {"red": True, "bold": True}}.get(
            verdict, {"yellow": True}
        )
        tr.write(
            f"{c['id']:<{width}}  {_interval(c):<28} {Bound(c['direction']).symbol} "
            f"{c['threshold']:<8g} "
        )
        tr.write(verdict, **markup)
        tr.line("")
    for n in run.not_run:
        if n["kind"] == NOT_APPLICABLE:
            tr.line(f"{n['id']:<{width}}  not applicable: {n['reason']}")
        elif n["kind"] != "absent":
            tr.line(f"{n['id']:<{width}}  not run ({n['kind']}): {n['reason']}")
    if run.report_path is not None:
        tr.line(f"report: {run.report_path / 'index.html'}", bold=alone)
    elif run.report_error:
        tr.line(f"no report written: {run.report_error}", red=True)
    elif not run.checks:
        tr.line("no check ran, so no report was written")


def _no_checks_reason(run: CheckpointRun) -> str:
    errors = [n["reason"] for n in run.not_run if n["kind"] == "error"]
    return f"no check ran ({errors[0]})" if errors else "no check ran"


def _interval(c: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "nan" if x is None or x != x else f"{x:.3f}"

    return f"{f(c['value'])} [{f(c['lo'])}, {f(c['hi'])}]"


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge a test's context into the run's: later non-empty values win, dicts merge."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        elif v not in (None, {}, []):
            into[k] = v


def _not_run(nodeid: str, audit: str, kind: str, reason: str) -> dict[str, Any]:
    """The entry of a test whose checks did not run (``kind``: why not, in one word)."""
    cid = check_id_of(nodeid, audit)
    return {"id": cid, "audit": audit, "kind": kind, "reason": reason, "nodeid": nodeid}


def _skip_reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return str(reason).removeprefix("Skipped: ")


def _error_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message).splitlines()[0][:300]
    lines = [ln for ln in report.longreprtext.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "unknown error"


def _publish(config: pytest.Config, s: AuditSession) -> None:
    """The run's identity as JUnit suite properties and as pytest-html's Environment rows."""
    outcomes = [
        RunOutcome(r.checkpoint.label, r.checkpoint.spec, r.record, r.report_path, tuple(r.unmet))
        for r in s.runs.values()
    ]
    xml = config.stash.get(xml_key, None)
    if xml is not None:
        for name, value in suite_properties(outcomes, s.trend_path):
            xml.add_global_property(name, value)
    try:  # pytest-html reads its Environment table from pytest-metadata's dict when it writes
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    metadata = config.stash.get(metadata_key, None)
    if metadata is not None:
        metadata.update(environment(outcomes))
