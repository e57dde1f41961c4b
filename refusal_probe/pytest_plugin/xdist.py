"""A series under pytest-xdist: every test of one checkpoint on one worker.

``pytest audits/ --model A --model B -n 2 --dist loadgroup`` sends each checkpoint's tests to a
single worker, so each model is loaded by one process only. pytest-xdist's own ``loadgroup``
reads the ``xdist_group`` marks (which the plugin puts on a series' tests) through a suffix it
appends to test ids, which pytest 9.2 no longer lets it change (pytest-dev/pytest-xdist#1386);
:class:`CheckpointScheduling` reads the checkpoint from the test id's parameters instead, and
leaves every other test to xdist's grouping. This module imports xdist: import it only when
xdist runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling


def checkpoint_label(nodeid: str, labels: Sequence[str]) -> str | None:
    """The checkpoint a test id names among its parameters (``test_x[ck-2]``), or ``None``.

    The checkpoint's id joins any other parameter's with ``-`` (``test_x[ck-2-7]`` for a second
    parameter ``7``); the longest label that fits wins, so ``ck-2`` is not taken for ``ck``.
    """
    name = nodeid.rsplit("::", 1)[-1]
    if "@" in name[name.rfind("]") + 1 :]:  # xdist's own group suffix, where it still works
        name = name[: name.rfind("@")]
    if "[" not in name or not name.endswith("]"):
        return None
    params = name[name.find("[") + 1 : -1]
    for label in sorted(labels, key=len, reverse=True):
        if (
            params == label
            or params.startswith(label + "-")
            or params.endswith("-" + label)
            or f"-{label}-" in params
        ):
            return label
    return None


class CheckpointScheduling(LoadGroupScheduling):
    """xdist's ``loadgroup`` scheduling, with each checkpoint of a series one group."""

    def __init__(self, config: pytest.Config, log: Any, labels: Sequence[str]) -> None:
        """Schedule for a series whose checkpoints have ``labels``."""
        super().__init__(config, log)
        self.labels = tuple(labels)

    def _split_scope(self, nodeid: str) -> str:
        label = checkpoint_label(nodeid, self.labels)
        return f"refusal-probe checkpoint {label}" if label else str(super()._split_scope(nodeid))
