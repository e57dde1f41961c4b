"""Inline SVG plots, written by hand: no plotting library, no scripts, no external assets.

Each function takes a figure's ``data`` (see :class:`~refusal_probe.report.record.Figure`) and
returns one ``<svg>`` element as text, safe to inline in HTML.

``line``:    ``x``, ``series`` = [{``name``, ``y``, optional ``lo``/``hi`` band}], optional
             ``threshold``, ``mark_x`` (a vertical marker, e.g. the selected layer), ``x_label``,
             ``y_label``, ``y_range``, ``x_labels`` (a name per x, for categories such as
             checkpoints; long names are shortened, the full name is the point's tooltip).
``heatmap``: ``values`` (rows × columns, ``None`` for a missing cell), ``x_labels``, ``y_labels``,
             optional ``mark`` = [row, column], ``crossed`` = [[row, column], ...] (drawn with
             an X: a value that was ruled out), ``x_label``, ``y_label``, ``value_label``,
             ``diverging`` (centre the colour scale on 0), ``range``.
``bars``:    ``labels``, ``series`` = [{``name``, ``values``, optional ``lo``/``hi``}], optional
             ``threshold``, ``y_label``, ``y_range``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

from refusal_probe.report.record import Figure

PALETTE = ("#3366cc", "#dc3912", "#109618", "#ff9900", "#990099", "#0099c6")
W, H = 560, 300
ML, MR, MT, MB = 56, 16, 16, 48  # margins: left, right, top, bottom


def render_figure(fig: Figure) -> str:
    """The SVG of a figure (an empty string for ``table`` figures, which render as HTML)."""
    drawers = {"line": line_svg, "heatmap": heatmap_svg, "bars": bars_svg}
    draw = drawers.get(fig.kind)
    return draw(fig.data, fig.title) if draw else ""


def _t(x: Any) -> str:
    return escape(str(x), {'"': "&quot;"})


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nice(v: float) -> str:
    return f"{v:.3g}"


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _svg(body: list[str], title: str, w: int = W, h: int = H) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        f'role="img" aria-label="{_t(title)}" class="plot"><title>{_t(title)}</title>'
        + "".join(body)
        + "</svg>"
    )


class _Scale:
    """A linear map from data to pixels."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float) -> None:
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.p0, self.p1 = lo, hi, p0, p1

    def __call__(self, v: float) -> float:
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)

    def ticks(self, n: int = 5) -> list[float]:
        """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) inside the range."""
        raw = (self.hi - self.lo) / (n - 1)
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        first = math.ceil(self.lo / step - 1e-9) * step
        count = int(math.floor((self.hi - first) / step + 1e-9)) + 1
        return [round(first + i * step, 12) for i in range(count)]


def _axes(
    xs: _Scale, ys: _Scale, x_label: str, y_label: str, x_ticks: Sequence[tuple[float, str]]
) -> list[str]:
    out = ['<g class="axes" font-size="11" fill="#333" stroke="none">']
    for v in ys.ticks():
        y = ys(v)
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_nice(v)}</text>')
    for v, label in x_ticks:
        out.append(
            f'<text x="{xs(v):.1f}" y="{H - MB + 16}" text-anchor="middle">{_t(label)}</text>'
        )
    out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{H - MB}" y2="{H - MB}" stroke="#333"/>')
    out.append(f'<line x1="{ML}" x2="{ML}" y1="{MT}" y2="{H - MB}" stroke="#333"/>')
    out.append(
        f'<text x="{(ML + W - MR) / 2}" y="{H - 8}" text-anchor="middle">{_t(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate(14 {(MT + H - MB) / 2}) rotate(-90)" '
        f'text-anchor="middle">{_t(y_label)}</text>'
    )
    out.append("</g>")
    return out


def _y_range(values: list[float], given: Any, threshold: Any) -> tuple[float, float]:
    if isinstance(given, (list, tuple)) and len(given) == 2 and all(_finite(v) for v in given):
        return float(given[0]), float(given[1])
    pool = [v for v in values if _finite(v)] + ([threshold] if _finite(threshold) else [])
    if not pool:
        return 0.0, 1.0
    lo, hi = min(pool), max(pool)
    pad = (hi - lo) * 0.05 or 0.5
    return lo - pad, hi + pad


def _threshold(ys: _Scale, t: Any) -> list[str]:
    if not _finite(t) or not ys.lo <= t <= ys.hi:
        return []
    y = ys(t)
    return [
        f'<line class="threshold" x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c00" '
        f'stroke-dasharray="6 4"/><text x="{W - MR - 4}" y="{y - 4:.1f}" text-anchor="end" '
        'font-size="11" '
        f'fill="#c00">threshold {_nice(t)}</text>'
    ]


#: Legend text: font size and a generous average glyph width (px) for laying items out.
LEGEND_FONT, GLYPH_W, LEGEND_ROW = 11, 6.6, 16


def _legend(names: list[str]) -> tuple[list[str], int]:
    """Legend items laid out below the plot area, wrapped to the width; and the height they add.

    The legend never sits on the data: it starts under the x-axis label, one row per
    ``LEGEND_ROW`` pixels, each item as wide as its text (names longer than 48 characters are
    shortened; the full name is the item's tooltip).
    """
    if len(names) < 2:
        return [], 0
    out, x, row = [], ML, 0
    for i, name in enumerate(names):
        shown = _short(name, 48)
        width = 14 + GLYPH_W * len(shown) + 18
        if x + width > W - MR and x > ML:
            x, row = ML, row + 1
        y = H + 4 + row * LEGEND_ROW
        out.append(
            f'<g class="legend-item"><title>{_t(name)}</title>'
            f'<rect x="{x:.0f}" y="{y}" width="10" height="10" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{x + 14:.0f}" y="{y + 9}" font-size="{LEGEND_FONT}">{_t(shown)}</text></g>'
        )
        x += width
    return out, (row + 1) * LEGEND_ROW + 8


def line_svg(data: dict[str, Any], title: str = "") -> str:
    """Series over x with optional interval bands, a threshold line and a marked x."""
    xs_raw = [float(v) for v in data.get("x", [])]
    series = data.get("series", [])
    if not xs_raw or not series:
        return _svg(['<text x="20" y="40">no data</text>'], title)
    pool = [v for s in series for k in ("y", "lo", "hi") for v in s.get(k) or []]
    ys = _Scale(*_y_range(pool, data.get("y_range"), data.get("threshold")), H - MB, MT)
    names = [str(v) for v in data.get("x_labels") or []]
    inset = 40 if len(names) == len(xs_raw) else 8  # room for a name centred under the last x
    xs = _Scale(min(xs_raw), max(xs_raw), ML + inset, W - MR - inset)
    if len(names) == len(xs_raw):
        step = max(1, len(xs_raw) // 8)
        ticks = [(v, _short(n)) for v, n in list(zip(xs_raw, names, strict=True))[::step]]
    else:
        names = [_nice(v) for v in xs_raw]
        ticks = [(v, _nice(v)) for v in xs_raw[:: max(1, len(xs_raw) // 12)]]
    body = _axes(xs, ys, data.get("x_label", ""), data.get("y_label", ""), ticks)
    mark = data.get("mark_x")
    if _finite(mark):
        body.append(
            f'<line class="mark" x1="{xs(mark):.1f}" x2="{xs(mark):.1f}" y1="{MT}" y2="{H - MB}" '
            'stroke="#888" stroke-dasharray="2 3"/>'
        )
    body += _threshold(ys, data.get("threshold"))
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        lo, hi = s.get("lo"), s.get("hi")
        if lo and hi:
            up = [(xs(x), ys(h)) for x, h in zip(xs_raw, hi, strict=False) if _finite(h)]
            down = [(xs(x), ys(v)) for x, v in zip(xs_raw, lo, strict=False) if _finite(v)][::-1]
            if up and down:
                pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in up + down)
                body.append(
                    f'<polygon class="band" points="{pts}" fill="{color}" fill-opacity="0.15" '
                    'stroke="none"/>'
                )
        pts = [(xs(x), ys(y)) for x, y in zip(xs_raw, s.get("y", []), strict=False) if _finite(y)]
        if pts:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            body.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>'
            )
            ys_ = s.get("y", [])
            tips = [f"{n}: {_nice(y)}" for n, y in zip(names, ys_, strict=False) if _finite(y)]
            body += [
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{color}"><title>{_t(tip)}'
                "</title></circle>"
                for (a, b), tip in zip(pts, tips, strict=False)
            ]
    legend, extra = _legend([s.get("name", "") for s in series])
    return _svg(body + legend, title, W, H + extra)


def bars_svg(data: dict[str, Any], title: str = "") -> str:
    """Grouped bars with interval whiskers and a threshold line."""
    labels = [str(v) for v in data.get("labels", [])]
    series = data.get("series", [])
    if not labels or not series:
        return _svg(['<text x="20" y="40">no data</text>'], title)
    pool = [v for s in series for k in ("values", "lo", "hi") for v in s.get(k) or []] + [0.0]
    ys = _Scale(*_y_range(pool, data.get("y_range"), data.get("threshold")), H - MB, MT)
    xs = _Scale(0, len(labels), ML, W - MR)
    body = _axes(
        xs,
        ys,
        data.get("x_label", ""),
        data.get("y_label", ""),
        [(i + 0.5, lab) for i, lab in enumerate(labels)],
    )
    group_w = (W - MR - ML) / len(labels)
    bar_w = group_w * 0.7 / len(series)
    for j, s in enumerate(series):
        color = PALETTE[j % len(PALETTE)]
        lo, hi = s.get("lo") or [], s.get("hi") or []
        for i, v in enumerate(s.get("values", [])):
            if not _finite(v):
                continue
            x = ML + i * group_w + group_w * 0.15 + j * bar_w
            y0, y1 = ys(max(min(0.0, ys.hi), ys.lo)), ys(v)
            body.append(
                f'<rect x="{x:.1f}" y="{min(y0, y1):.1f}" width="{bar_w * 0.9:.1f}" '
                f'height="{abs(y0 - y1):.1f}" fill="{color}"><title>{_t(s.get("name", ""))} '
                f"{_t(labels[i])}: {_nice(v)}</title></rect>"
            )
            if i < len(lo) and i < len(hi) and _finite(lo[i]) and _finite(hi[i]):
                cx = x + bar_w * 0.45
                body.append(
                    f'<line class="whisker" x1="{cx:.1f}" x2="{cx:.1f}" y1="{ys(lo[i]):.1f}" '
                    f'y2="{ys(hi[i]):.1f}" stroke="#222" stroke-width="1.5"/>'
                )
    body += _threshold(ys, data.get("threshold"))
    legend, extra = _legend([s.get("name", "") for s in series])
    return _svg(body + legend, title, W, H + extra)


def _color(v: float, lo: float, hi: float, diverging: bool) -> str:
    if diverging:
        m = max(abs(lo), abs(hi)) or 1.0
        t = max(-1.0, min(1.0, v / m))
        if t >= 0:  # white → red
            g = int(255 * (1 - t))
            return f"rgb(255,{g},{g})"
        g = int(255 * (1 + t))  # white → blue
        return f"rgb({g},{g},255)"
    t = 0.0 if hi == lo else max(0.0, min(1.0, (v - lo) / (hi - lo)))
    return (
        f"rgb({int(247 - 239 * t)},{int(251 - 203 * t)},{int(255 - 148 * t)})"  # light → dark blue
    )


def heatmap_svg(data: dict[str, Any], title: str = "") -> str:
    """A grid of cells coloured by value; ``None`` cells are hatched grey."""
    rows = data.get("values", [])
    if not rows or not rows[0]:
        return _svg(['<text x="20" y="40">no data</text>'], title)
    n_r, n_c = len(rows), max(len(r) for r in rows)
    vals = [v for r in rows for v in r if _finite(v)]
    rng = data.get("range")
    lo, hi = (
        rng
        if isinstance(rng, (list, tuple)) and len(rng) == 2
        else (min(vals, default=0.0), max(vals, default=1.0))
    )
    diverging = bool(data.get("diverging"))
    x_labels = data.get("x_labels") or list(range(n_c))
    y_labels = data.get("y_labels") or list(range(n_r))
    cw = min(56.0, (W - ML - MR - 70) / n_c)
    ch = min(28.0, max(10.0, (H - MT - MB) / n_r))
    h = int(MT + MB + ch * n_r)
    body = ['<g font-size="10">']
    for i, r in enumerate(rows):
        y = MT + i * ch
        body.append(
            f'<text x="{ML - 4}" y="{y + ch / 2 + 3:.1f}" '
            f'text-anchor="end">{_t(y_labels[i])}</text>'
        )
        for j, v in enumerate(r):
            x = ML + j * cw
            fill = _color(v, lo, hi, diverging) if _finite(v) else "#d9d9d9"
            label = _nice(v) if _finite(v) else "filtered / n/a"
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cw:.1f}" height="{ch:.1f}" fill="{fill}" '
                f'stroke="#fff" stroke-width="0.5"><title>{_t(y_labels[i])}, {_t(x_labels[j])}: '
                f"{label}</title></rect>"
            )
    step = max(1, n_c // 16)
    for j in range(0, n_c, step):
        body.append(
            f'<text x="{ML + (j + 0.5) * cw:.1f}" y="{MT + n_r * ch + 12:.1f}" '
            f'text-anchor="middle">{_t(x_labels[j])}</text>'
        )
    for r, c in data.get("crossed") or []:  # cells that carry a value but were ruled out
        x0, y0, x1, y1 = (
            ML + c * cw + 2,
            MT + r * ch + 2,
            ML + (c + 1) * cw - 2,
            MT + (r + 1) * ch - 2,
        )
        body.append(
            f'<path class="crossed" d="M{x0:.1f} {y0:.1f}L{x1:.1f} {y1:.1f}M{x1:.1f} {y0:.1f}'
            f'L{x0:.1f} {y1:.1f}" stroke="#555" stroke-width="1"/>'
        )
    mark = data.get("mark")
    if isinstance(mark, (list, tuple)) and len(mark) == 2:
        body.append(
            f'<rect class="mark" x="{ML + mark[1] * cw:.1f}" y="{MT + mark[0] * ch:.1f}" '
            f'width="{cw:.1f}" '
            f'height="{ch:.1f}" fill="none" stroke="#000" stroke-width="2"/>'
        )
    gx = ML + n_c * cw + 16
    body.append(f'<text x="{gx}" y="{MT + 10}">{_t(data.get("value_label", ""))}</text>')
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        body.append(
            f'<rect x="{gx}" y="{MT + 16 + k * 14}" width="12" height="12" '
            f'fill="{_color(v, lo, hi, diverging)}"/>'
            f'<text x="{gx + 16}" y="{MT + 26 + k * 14}">{_nice(v)}</text>'
        )
    body.append(
        f'<text x="{ML + n_c * cw / 2:.1f}" y="{h - 8}" '
        f'text-anchor="middle">{_t(data.get("x_label", ""))}</text>'
    )
    body.append(
        f'<text transform="translate(12 {MT + n_r * ch / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{_t(data.get("y_label", ""))}</text></g>'
    )
    return _svg(body, title, W, max(h, 140))
