"""Localization of refusal: exact and attribution activation patching, circuit summaries.

Axes used throughout: ``pair`` matched (harmful, harmless) prompt pairs, ``layer``, ``head``,
``pos`` (negative offsets from the end of the prompt), ``comp`` components of a grid flattened.

Entry points:

* :func:`localize` — attribution filter, exact confirmation, circuit summary
  (:class:`CircuitResult`); :func:`compare_circuits` for a fine-tune against its parent.
* :func:`exact_patching` — one grid, exactly, many patched variants per forward pass;
  :func:`reference_patching` — the same with one forward per component (the yardstick);
  :func:`attribution_patching` — every grid at once, in three passes.
* :class:`PatchMode` — denoising or noising, with its sign.
* :class:`PatchResult` — effects with intervals, ``to_dict()`` for heatmaps; :func:`agreement`.
"""

from refusal_probe.patching.circuit import CircuitResult, RankStability, localize
from refusal_probe.patching.compare import CircuitComparison, compare_circuits
from refusal_probe.patching.components import GRIDS, Component, Grid, make_grid
from refusal_probe.patching.mode import PatchMode
from refusal_probe.patching.pairs import (
    Metric,
    PairBatch,
    RefusalLogOdds,
    default_metric,
    encode_pairs,
)
from refusal_probe.patching.results import Agreement, PatchResult, agreement
from refusal_probe.patching.sweeps import (
    attribution_patching,
    exact_patching,
    patch_variants,
    reference_patching,
)

__all__ = [
    "GRIDS",
    "Agreement",
    "CircuitComparison",
    "CircuitResult",
    "Component",
    "Grid",
    "Metric",
    "PairBatch",
    "PatchMode",
    "PatchResult",
    "RankStability",
    "RefusalLogOdds",
    "agreement",
    "attribution_patching",
    "compare_circuits",
    "default_metric",
    "encode_pairs",
    "exact_patching",
    "localize",
    "make_grid",
    "patch_variants",
    "reference_patching",
]
