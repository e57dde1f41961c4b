"""What changed per layer between two audit runs: separation, direction cosine, ablation effect.

The question a base model against its safety-trained checkpoint answers (or a fine-tune against
its parent): at which layers does the harmful/harmless distinction appear or sharpen, does the
difference of means point the same way, and where does ablating it act? Everything is read from
what the two runs already wrote, nothing is recomputed:

- **separation**: the representation check's per-layer AUROC on the held-out test split (the
  difference of means at the run's direction position);
- **cosine**: between the two runs' per-layer difference-of-means candidates, read from each
  run's ``direction.safetensors`` (its candidates of every layer at its direction's position,
  which the command line reads and passes in);
  when the runs chose different positions the cosine compares different positions, and the page
  says so;
- **bypass**: the selection grid's refusal log-odds on harmful prompts with the candidate
  ablated (lower: ablation removes more refusal), at the run's direction position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from refusal_probe.report.record import AuditRecord, Figure

SEPARATION = "representation.separation_auroc"
SEPARATION_TITLE = "Separation per layer"
GRID_TITLE = "Selection grid"

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class LayerRow:
    """One layer in both runs (``None`` where a run has no figure there)."""

    layer: int
    separation_a: float | None
    separation_b: float | None
    cosine: float | None
    bypass_a: float | None
    bypass_b: float | None

    @property
    def separation_delta(self) -> float | None:
        """B's separation minus A's."""
        a, b = self.separation_a, self.separation_b
        return None if a is None or b is None else b - a


@dataclass(frozen=True)
class LayerChanges:
    """The per-layer comparison and what limits it."""

    rows: tuple[LayerRow, ...]
    direction_layers: tuple[int | None, int | None]
    notes: tuple[str, ...]

    def figure(self) -> Figure:
        """Separation of both runs and the directions' cosine over the layers, one plot."""
        x = [r.layer for r in self.rows]
        series = [
            {"name": "separation A", "y": [r.separation_a for r in self.rows]},
            {"name": "separation B", "y": [r.separation_b for r in self.rows]},
            {"name": "cosine A·B", "y": [r.cosine for r in self.rows]},
        ]
        return Figure(
            "line",
            "Per layer: held-out separation of each run and the cosine of their directions",
            {
                "x": x,
                "series": series,
                "x_label": "layer",
                "y_label": "AUROC / cosine",
                "y_range": [0, 1],
            },  # fmt: skip
            "Separation: AUROC of the difference of means on the test split. Cosine: of the two "
            "runs' difference-of-means candidates at the same layer.",
        )


def _separation(record: AuditRecord) -> dict[int, float]:
    check = record.check(SEPARATION)
    for fig in check.figures if check else ():
        if fig.kind == "line" and fig.title.startswith(SEPARATION_TITLE):
            data = fig.data
            ys = data["series"][0]["y"]  # the difference of means
            return {int(x): y for x, y in zip(data["x"], ys, strict=True) if y is not None}
    return {}


def _bypass(record: AuditRecord, position: int | None) -> dict[int, float]:
    check = record.check(SEPARATION)
    for fig in check.figures if check else ():
        if fig.kind == "heatmap" and fig.title.startswith(GRID_TITLE):
            data = fig.data
            cols = [int(c) for c in data["x_labels"]]
            if position not in cols:
                return {}
            j = cols.index(position)
            return {
                int(y): row[j]
                for y, row in zip(data["y_labels"], data["values"], strict=True)
                if row[j] is not None
            }
    return {}


def _direction(record: AuditRecord) -> dict[str, Any] | None:
    check = record.check(SEPARATION)
    return (check.details or {}).get("direction") if check else None


def layer_changes(
    a: AuditRecord,
    b: AuditRecord,
    cand_a: Mapping[int, Tensor] | None = None,
    cand_b: Mapping[int, Tensor] | None = None,
) -> LayerChanges:
    """Compare two runs layer by layer (see the module docstring).

    Args:
        a: The first run (the base, or the parent).
        b: The second run.
        cand_a: A's per-layer candidates at its direction position (from its direction file);
            ``None``: no cosine.
        cand_b: B's.
    """
    notes = []
    da, db = _direction(a), _direction(b)
    pos_a = da.get("position") if da else None
    pos_b = db.get("position") if db else None
    sep_a, sep_b = _separation(a), _separation(b)
    byp_a, byp_b = _bypass(a, pos_a), _bypass(b, pos_b)
    cand_a, cand_b = cand_a or {}, cand_b or {}
    if not (sep_a or sep_b):
        notes.append("Neither run has the representation check's per-layer separation.")
    if not (cand_a and cand_b):
        notes.append("A run has no direction file beside its audit.json: no cosine.")
    elif pos_a != pos_b:
        notes.append(
            f"The runs' directions sit at different positions ({pos_a} and {pos_b}): the cosine "
            "compares their candidates at those positions."
        )
    layers = sorted(set(sep_a) | set(sep_b) | set(cand_a) | set(cand_b))
    rows = []
    for layer in layers:
        cos = None
        if layer in cand_a and layer in cand_b and len(cand_a[layer]) == len(cand_b[layer]):
            u, v = cand_a[layer].double(), cand_b[layer].double()
            denom = float(u.norm() * v.norm())
            cos = float(u @ v) / denom if denom > 0 else None
        rows.append(
            LayerRow(
                layer,
                sep_a.get(layer),
                sep_b.get(layer),
                None if cos is None or math.isnan(cos) else cos,
                byp_a.get(layer),
                byp_b.get(layer),
            )
        )
    return LayerChanges(
        tuple(rows),
        (da.get("layer") if da else None, db.get("layer") if db else None),
        tuple(notes),
    )
