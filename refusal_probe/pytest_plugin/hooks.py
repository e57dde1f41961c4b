"""The session object's hooks: preflight, verdict status, pytest-html extras, summary, report.

Checks travel on test reports (``report.audit_checks``), so the controller of a pytest-xdist run
sees the workers' checks; workers never write reports. The report folder is written in
``pytest_sessionfinish`` (before the terminal summary, which then names it).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from refusal_probe.errors import RefusalProbeError
from refusal_probe.pytest_plugin.session import ITEM_CHECKS_KEY, AuditSession
from refusal_probe.report.plots import render_figure
from refusal_probe.report.record import AUDIT_ORDER, Figure

_SYMBOL = {"at_least": "≥", "at_most": "≤"}


def is_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker."""
    return hasattr(config, "workerinput")


def audit_of(item: pytest.Item) -> str | None:
    """The audit a test belongs to: its audit marker."""
    for name in AUDIT_ORDER:
        if item.get_closest_marker(name) is not None:
            return name
    return None


def check_id_of(nodeid: str, audit: str) -> str:
    """The check id a test stands for when it did not run: ``<audit>.<test name>``."""
    name = nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
    return f"{audit}.{name.removeprefix('test_')}"


class AuditHooks:
    """Hook implementations bound to one run's :class:`AuditSession`."""

    def __init__(self, config: pytest.Config, session: AuditSession) -> None:
        """Bind to the run's config and session state."""
        self.config = config
        self.session = session
        self._selected: dict[str, str] = {}
        self._reported: set[str] = set()

    # --- collection --------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Note the selected audit tests; if there are any, check the inputs before running them."""
        for item in items:
            audit = audit_of(item)
            if audit:
                self._selected[item.nodeid] = audit
                self.session.collected_audits.add(audit)
        self.session.audit_items = dict(self._selected)
        if self._selected:
            from refusal_probe.pytest_plugin.findings import preflight

            try:
                preflight(self.session)
            except RefusalProbeError as exc:
                self.session.abort(str(exc))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        """Deselected audit tests are reported as not run."""
        for item in items:
            audit = audit_of(item)
            if audit:
                self.session.collected_audits.add(audit)
                self.session.not_run.append(
                    {
                        "id": check_id_of(item.nodeid, audit),
                        "audit": audit,
                        "kind": "deselected",
                        "reason": "deselected (-k/-m)",
                        "nodeid": item.nodeid,
                    }
                )

    # --- per test ----------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        """Put the item's checks (and the shared context) on its report, with pytest-html extras."""
        report = yield
        audit = self._selected.get(item.nodeid) or audit_of(item)
        if not audit:
            return report
        report.audit_name = audit
        if report.when == "call":
            checks = list(item.stash.get(ITEM_CHECKS_KEY, []))
            report.audit_checks = checks
            for c in checks:  # junitxml writes the properties of the item (teardown report)
                item.user_properties.append((f"check:{c['id']}", _one_line(c)))
            if checks and self.session._findings is not None:
                report.audit_context = self.session.findings.context()
            if checks:
                report.extras = list(getattr(report, "extras", [])) + _html_extras(checks)
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
        ctx = getattr(report, "audit_context", None)
        if ctx:
            _merge(self.session.context, ctx)
        checks = getattr(report, "audit_checks", [])
        for c in checks:
            self.session.checks.append({**c, "duration_s": round(report.duration, 3)})
        cid = check_id_of(report.nodeid, audit)
        if report.skipped:
            self.session.not_run.append(
                {
                    "id": cid,
                    "audit": audit,
                    "kind": "skipped",
                    "reason": _skip_reason(report),
                    "nodeid": report.nodeid,
                }
            )
        elif report.failed and not any(c["verdict"] == "fail" for c in checks):
            self.session.not_run.append(
                {
                    "id": cid,
                    "audit": audit,
                    "kind": "error",
                    "reason": f"error in {report.when}: {_error_line(report)}",
                    "nodeid": report.nodeid,
                }
            )

    # --- end of run --------------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the report folder (controller only; not after an aborted run or without checks)."""
        s = self.session
        if is_worker(self.config) or s.aborted or not s.options.write_report or not s.checks:
            return
        for nodeid, audit in self._selected.items():
            if nodeid not in self._reported:
                s.not_run.append(
                    {
                        "id": check_id_of(nodeid, audit),
                        "audit": audit,
                        "kind": "not_reached",
                        "reason": "the run stopped before this test (-x, --maxfail or an "
                        "interrupt)",
                        "nodeid": nodeid,
                    }
                )
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or bool(
            session.shouldstop or session.shouldfail  # -x / --maxfail stop the run early
        )
        from refusal_probe.pytest_plugin.record import build_record, save_record

        try:
            record = build_record(self.config, s, int(exitstatus), time.time(), interrupted)
            s.report_path = save_record(record, s)
        except RefusalProbeError as exc:
            s.report_error = str(exc)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """List every check with value, interval, threshold and verdict; name the report."""
        s = self.session
        quiet = is_worker(self.config) or s.aborted or self.config.option.collectonly
        if quiet or not (s.checks or s.not_run):
            return
        tr = terminalreporter
        tr.section("refusal-probe audit")
        width = max((len(c["id"]) for c in s.checks), default=10)
        for c in s.checks:
            verdict = c["verdict"].upper()
            markup = {"PASS": {"green": True}, "FAIL": {"red": True, "bold": True}}.get(
                verdict, {"yellow": True}
            )
            tr.write(
                f"{c['id']:<{width}}  {_interval(c):<28} {_SYMBOL[c['direction']]} "
                f"{c['threshold']:<8g} "
            )
            tr.write(verdict, **markup)
            tr.line("")
        for n in s.not_run:
            if n["kind"] != "absent":
                tr.line(f"{n['id']:<{width}}  not run ({n['kind']}): {n['reason']}")
        if s.report_path is not None:
            tr.line(f"report: {s.report_path / 'index.html'}", bold=True)
        elif s.report_error:
            tr.line(f"no report written: {s.report_error}", red=True)
        elif not s.checks:
            tr.line("no check ran, so no report was written")


def _interval(c: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "nan" if x is None or x != x else f"{x:.3f}"

    return f"{f(c['value'])} [{f(c['lo'])}, {f(c['hi'])}]"


def _one_line(c: dict[str, Any]) -> str:
    return f"{c['verdict']} {_interval(c)} {_SYMBOL[c['direction']]} {c['threshold']:g}"


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge a test's context into the run's: later non-empty values win, dicts merge."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        elif v not in (None, {}, []):
            into[k] = v


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


def _html_extras(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pytest-html extras: a verdict line per check and its figures as base64 SVG images."""
    from html import escape

    out: list[dict[str, Any]] = []
    for c in checks:
        out.append(
            {
                "name": c["id"],
                "format_type": "html",
                "mime_type": None,
                "extension": None,
                "content": f'<div class="refusal-probe-check" data-check-id="{escape(c["id"])}">'
                f"<b>{escape(c['verdict'].upper())}</b> {escape(c['message'])}</div>",
            }
        )
        for f in c["figures"]:
            svg = render_figure(Figure.from_dict(f))
            if svg:
                out.append(
                    {
                        "name": f["title"],
                        "format_type": "image",
                        "mime_type": "image/svg+xml",
                        "extension": "svg",
                        "content": base64.b64encode(svg.encode()).decode(),
                    }
                )
            else:
                out.append(
                    {
                        "name": f["title"],
                        "format_type": "json",
                        "mime_type": "application/json",
                        "extension": "json",
                        "content": json.dumps(f["data"]),
                    }
                )
    return out
