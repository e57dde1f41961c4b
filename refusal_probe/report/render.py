"""One Jinja render of an audit record, and the atomic write of a run's report folder.

A run's folder is ``<report_dir>/<model-slug>/<run-id>/`` with ``index.html`` (self-contained:
inline CSS and SVG, no scripts, no network) and ``audit.json``. Both are written into a hidden
temporary folder that is renamed into place only when complete, and ``<model-slug>/latest`` is
switched to the new run only for a complete record, so an interrupted run never leaves a report
that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refusal_probe.errors import ReportError
from refusal_probe.report.plots import render_figure
from refusal_probe.report.record import AuditRecord, Figure
from refusal_probe.report.schema import validate_record

TEMPLATES = Path(__file__).with_name("templates")


def model_slug(spec: str) -> str:
    """A folder name for a model spec: its last path component, made filesystem-safe."""
    name = Path(spec.rstrip("/\\")).name or spec
    name = re.sub(r"\.(gguf|safetensors)$", "", name)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug or "model"


def model_slugs(specs: Sequence[str]) -> list[str]:
    """A distinct folder name for each spec of a series, in order.

    Each is :func:`model_slug` of the spec where that is unique; specs whose last path components
    agree (``runs/a/checkpoint-100`` and ``runs/b/checkpoint-100``) take parent folders into the
    name until they differ (``a-checkpoint-100``), and a spec given twice gets ``-2``, ``-3``.
    """
    parts = [[p for p in re.split(r"[/\\]+", s.rstrip("/\\")) if p] or [s] for s in specs]
    depth = [1] * len(specs)

    def name(i: int) -> str:
        return model_slug("-".join(parts[i][-depth[i] :]))

    while True:
        names = [name(i) for i in range(len(specs))]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def environment() -> Any:
    """The Jinja environment shared by the report and the comparison page (autoescaping on)."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_number
    env.filters["svg"] = lambda fig: Markup(
        render_figure(fig if isinstance(fig, Figure) else Figure.from_dict(fig))
    )
    env.filters["tojson_pretty"] = lambda obj: json.dumps(
        obj, indent=2, sort_keys=True, default=str
    )
    env.globals["css"] = Markup((TEMPLATES / "report.css").read_text(encoding="utf-8"))
    return env


def fmt_number(x: Any, digits: int = 3) -> str:
    """Numbers for people: ``None``/NaN as an em dash, floats to ``digits`` significant places."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def render_html(record: AuditRecord) -> str:
    """The report page of one record."""
    return environment().get_template("report.html").render(r=record, summary=record.summary())


def write_report(
    record: AuditRecord,
    report_dir: str | Path,
    files: dict[str, Path] | None = None,
    *,
    slug: str | None = None,
) -> Path:
    """Validate the record, then write its folder atomically; return the folder.

    Args:
        record: The audit record.
        report_dir: The reports root; the run goes to ``<report_dir>/<model-slug>/<run-id>/``.
        files: Extra files to copy into the folder, by the name they get there (the record's
            ``artifacts`` should list them).
        slug: The model's folder name (default :func:`model_slug` of its spec; a series of
            checkpoints passes :func:`model_slugs`, which keeps them apart).

    Raises:
        ReportError: The record does not match the schema (nothing is written), or the folder
            cannot be written.
    """
    data = record.to_dict()
    validate_record(data, source=f"audit record of run {record.run.get('id')}")
    html = render_html(record)
    run_id = str(record.run["id"])
    parent = Path(report_dir) / (slug or model_slug(str(record.model.get("spec", "model"))))
    texts = {"audit.json": json.dumps(data, indent=2, sort_keys=False) + "\n", "index.html": html}
    final = write_folder(parent, run_id, texts, files)
    if record.status == "complete":
        try:
            point_latest(parent, run_id)
        except OSError as exc:
            raise ReportError(
                f"cannot write the report under {parent}: {exc}; check --report-dir"
            ) from exc
    return final


def check_writable(report_dir: str | Path, slugs: Sequence[str]) -> None:
    """Check, before an audit runs, that its report folders can be written.

    For the root and each model folder, the deepest part that exists must be a folder in which a
    file can be created (a trial file is written and removed: permission bits alone do not show a
    read-only file system).

    Raises:
        ReportError: One line naming the path, what is wrong and what to pass instead.
    """
    root = Path(report_dir)
    for target in [root, *(root / s for s in slugs)]:
        existing = target
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ReportError(
                f"cannot write reports under {target}: {existing} is a file, not a folder; pass "
                "--report-dir to a writable folder (or --no-report)"
            )
        try:
            fd, trial = tempfile.mkstemp(prefix=".write-check-", dir=existing)
        except OSError as exc:
            raise ReportError(
                f"cannot write reports under {target}: {existing} is not writable "
                f"({exc.strerror}); pass --report-dir to a writable folder (or --no-report)"
            ) from None
        os.close(fd)
        os.unlink(trial)


def write_folder(
    parent: Path, name: str, texts: dict[str, str], files: dict[str, Path] | None = None
) -> Path:
    """Write ``parent/name/`` with ``texts`` (name → UTF-8 text) and copies of ``files``.

    Everything goes into a hidden temporary folder that is renamed into place only when complete,
    so a reader never sees half a report.

    Raises:
        ReportError: The folder exists already, or cannot be written.
    """
    final = parent / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise ReportError(
                f"report folder {final} already exists; run ids are unique, so remove it"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a report is for reading
            for fname, text in texts.items():
                (tmp / fname).write_text(text, encoding="utf-8")
            for fname, src in (files or {}).items():
                shutil.copyfile(src, tmp / fname)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise ReportError(
            f"cannot write the report under {parent}: {exc}; check --report-dir"
        ) from exc
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def point_latest(parent: Path, run_id: str) -> None:
    """Point ``parent/latest`` at ``run_id`` atomically (a symlink, or a file naming it)."""
    link = parent / "latest"
    tmp = parent / f".latest-{run_id}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_id, tmp, target_is_directory=True)
    except OSError:  # filesystems without symlinks: a one-line file naming the run
        tmp.write_text(run_id + "\n", encoding="utf-8")
    if link.is_dir() and not link.is_symlink():
        raise ReportError(f"{link} is a real folder; remove it so it can point to the latest run")
    os.replace(tmp, link)
