"""The run's time budget (``--budget SECONDS``): results that cannot finish in it are not started.

A :class:`Budget` starts with the run. While a result is computed,
:meth:`Budget.enforced` watches the engine's counted loops (:mod:`refusal_probe.progress`): a
loop that opens, or reports progress, past the deadline raises
:class:`~refusal_probe.errors.BudgetSpent`, so a long phase stops within one batch of the
deadline instead of running unbounded, while a result the disk cache serves (no loop runs) is
still read. The sequential behaviour checks
ask :meth:`Budget.spent` between rounds and stop undecided (``budget``). The pytest plugin
turns a check whose result ran out of time into an inconclusive verdict naming the reason.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import ContextManager

from refusal_probe import progress
from refusal_probe.errors import BudgetSpent


@dataclass
class Budget:
    """Seconds a run may take, from its start.

    Attributes:
        seconds: The budget (``None``: unbounded).
        started: ``time.monotonic()`` at the run's start.
    """

    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"--budget {self.seconds!r}: give a positive number of seconds")

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def spent(self) -> bool:
        """Whether the budget has run out (never, without one)."""
        return self.seconds is not None and self.elapsed >= self.seconds

    def check(self, what: str) -> None:
        """Refuse to start (or go on with) ``what`` once the budget has run out.

        Raises:
            BudgetSpent: Naming ``what``, the budget and the time elapsed.
        """
        if self.spent():
            raise BudgetSpent(
                f"the time budget of {self.seconds:g} s (--budget) ran out before {what} could "
                f"finish ({self.elapsed:.0f} s elapsed); give a larger --budget, or none"
            )

    def enforced(self, what: str) -> ContextManager[None]:
        """Stop ``what`` at the first progress update past the deadline (see module docstring)."""
        return _watching(self, what) if self.seconds is not None else nullcontext()


def parse_budget(text: str) -> float:
    """``--budget SECONDS``: a positive, finite number of seconds.

    Raises:
        argparse.ArgumentTypeError: One line saying what to give.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time budget; give a positive number of seconds (say 600)"
        )
    return value


@contextmanager
def _watching(budget: Budget, what: str) -> Iterator[None]:
    with progress.reporting(_Deadline(progress.current(), budget, what)):
        yield


class _Deadline:
    """A progress reporter that forwards to another and raises once the budget is spent."""

    def __init__(self, inner: progress.Reporter, budget: Budget, what: str) -> None:
        self.inner, self.budget, self.what = inner, budget, what

    def open(self, name: str, total: float | None, unit: str, scale: float) -> progress.Bar:
        if total is not None:  # a counted loop is work about to start; a phase may be a read
            self.budget.check(self.what)
        return _Watched(self.inner.open(name, total, unit, scale), self)

    def close(self, bar: progress.Bar, failed: bool = False) -> None:
        inner = bar.bar if isinstance(bar, _Watched) else bar
        self.inner.close(inner, failed)


class _Watched:
    """A bar whose every update first checks the budget."""

    def __init__(self, bar: progress.Bar, owner: _Deadline) -> None:
        self.bar, self.owner = bar, owner

    def update(self, n: float = 1) -> None:
        self.owner.budget.check(self.owner.what)
        self.bar.update(n)
