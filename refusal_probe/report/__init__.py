"""Audit reports: the record (dataclasses + versioned JSON schema), SVG plots, render, trend."""

from refusal_probe.report.compare import (
    Comparison,
    compare_files,
    compare_records,
    render_comparison,
)
from refusal_probe.report.record import (
    SCHEMA_VERSION,
    AuditRecord,
    CheckRecord,
    Delta,
    Figure,
    NotRun,
)
from refusal_probe.report.render import model_slug, render_html, write_report
from refusal_probe.report.schema import load_schema, read_record, validate_record
from refusal_probe.report.trend import Trend, build_trend, trend_files, write_trend

__all__ = [
    "SCHEMA_VERSION",
    "AuditRecord",
    "CheckRecord",
    "Comparison",
    "Delta",
    "Figure",
    "NotRun",
    "Trend",
    "compare_files",
    "compare_records",
    "build_trend",
    "load_schema",
    "model_slug",
    "read_record",
    "render_comparison",
    "render_html",
    "trend_files",
    "validate_record",
    "write_report",
    "write_trend",
]
