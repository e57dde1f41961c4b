"""pytest-html extras of an audit test: a verdict line per check, its figures as images.

The checks are the dicts the ``audit`` fixture records; each figure is drawn as an inline SVG
(:func:`~refusal_probe.report.plots.render_figure`), or given as JSON data when it has no drawing.
"""

from __future__ import annotations

import base64
import json
from html import escape
from typing import Any

from refusal_probe.report.plots import render_figure
from refusal_probe.report.record import Figure


def html_extras(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pytest-html extras: a verdict line per check and its figures as base64 SVG images."""

    def extra(name: str, kind: str, mime: str | None, ext: str | None, content: str) -> dict:
        keys = ("name", "format_type", "mime_type", "extension", "content")
        return dict(zip(keys, (name, kind, mime, ext, content), strict=True))

    out: list[dict[str, Any]] = []
    for c in checks:
        line = (
            f'<div class="refusal-probe-check" data-check-id="{escape(c["id"])}">'
            f"<b>{escape(c['verdict'].upper())}</b> {escape(c['message'])}</div>"
        )
        out.append(extra(c["id"], "html", None, None, line))
        for f in c["figures"]:
            svg = render_figure(Figure.from_dict(f))
            if svg:
                svg64 = base64.b64encode(svg.encode()).decode()
                out.append(extra(f["title"], "image", "image/svg+xml", "svg", svg64))
            else:
                data = json.dumps(f["data"])
                out.append(extra(f["title"], "json", "application/json", "json", data))
    return out
