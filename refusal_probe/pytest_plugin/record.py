"""Turn what a pytest run collected into an :class:`AuditRecord`, and write it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from refusal_probe.audit.baseline import deltas_against, unopened
from refusal_probe.pytest_plugin.session import AuditSession, CheckpointRun
from refusal_probe.report.provenance import command_line, new_run_id, run_info
from refusal_probe.report.record import (
    LIMITATIONS,
    AuditRecord,
    CheckRecord,
    Delta,
    NotRun,
    status_of,
)
from refusal_probe.report.render import write_report


def build_record(
    config: pytest.Config,
    s: AuditSession,
    run: CheckpointRun,
    exit_status: int,
    finished: float,
    interrupted: bool,
) -> AuditRecord:
    """The record of one checkpoint from its checks, not-run entries and context."""
    opts = replace(s.options, model=run.checkpoint.spec)
    ctx = run.context
    policy = s.policy
    info = run_info(
        run_id=new_run_id(),
        started=s.started,
        finished=finished,
        command=command_line(Path(config.invocation_params.dir), config.invocation_params.args),
        cwd=Path(config.invocation_params.dir),
        root=Path(config.rootpath),
        device=f"device_map={opts.device_map}" if opts.device_map else opts.device,
        seed=opts.seed,
        strict=opts.strict,
        exit_status=exit_status,
    )
    if ctx.get("phases"):
        info["phases"] = ctx["phases"]
    if s.required is not None:
        info["required"] = {"checks": list(s.required.ids), "unmet": list(run.unmet)}
    not_run = [NotRun(**n) for n in run.not_run]
    for audit in policy.audit_names:
        if audit not in s.collected_audits:
            not_run.append(
                NotRun(
                    audit,
                    audit,
                    f"no test of the {audit} audit was collected (no audits/test_{audit}.py)",
                    "absent",
                )
            )
    checks = tuple(CheckRecord.from_dict(c) for c in run.checks)
    baseline = ctx.get("baseline") or unopened(opts.baseline)
    deltas = [Delta(**d) for d in ctx.get("deltas", [])]
    if baseline and baseline.get("kind") == "audit":
        deltas += deltas_against(checks, baseline["spec"], {d.id for d in deltas})
    return AuditRecord(
        status=status_of(interrupted, not_run),
        run=info,
        model=ctx.get("model") or _model_stub(opts.model),
        baseline=baseline,
        config={
            "options": opts.to_dict(),
            "policy": policy.to_dict(),
            "sha256": opts.sha256(policy),
        },
        data=ctx.get("data") or {},
        checks=checks,
        not_run=tuple(not_run),
        deltas=tuple(deltas),
        limitations=LIMITATIONS + tuple(ctx.get("limitations", ())),
        artifacts={name: name for name in ctx.get("artifacts", {})},
    )


def save_record(record: AuditRecord, s: AuditSession, run: CheckpointRun) -> Path:
    """Write the checkpoint's run folder, copying the artifacts its tests left in the cache.

    A series names each folder by the checkpoint's label, which keeps checkpoints whose specs
    end alike apart; a single model keeps its usual folder.
    """
    files = {
        name: Path(src)
        for name, src in run.context.get("artifacts", {}).items()
        if Path(src).is_file()
    }
    record = AuditRecord(**{**record.__dict__, "artifacts": {n: n for n in files}})
    run.record = record
    slug = run.checkpoint.label if s.series else None
    return write_report(record, s.options.report_dir, files, slug=slug)


def _model_stub(spec: str) -> dict[str, Any]:
    """Identity of a model no test loaded (every check was computed without it)."""
    return {
        "spec": spec,
        "weights_sha256": "",
        "architecture": "not loaded",
        "n_layers": 0,
        "d_model": 0,
        "fingerprint": "",
    }
