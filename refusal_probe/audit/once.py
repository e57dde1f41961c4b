"""Each shared result of a run computed at most once, and where the run's time went.

A :class:`Once` holds one result of an :class:`~refusal_probe.audit.run.AuditRun`: empty, its
value, or the error computing it raised (raised again on every later ask, without recomputing).
:class:`Phases` times each result without the results it asked for, so the phases of a run add
up to at most its duration, and counts the forward passes and token positions it ran the same
way (:class:`~refusal_probe.activations.runner.Work`); under a time budget it stops a result
that runs past it (:mod:`refusal_probe.audit.budget`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Generic, TypeVar, cast

from refusal_probe import progress
from refusal_probe.activations.runner import Work, counting
from refusal_probe.audit.budget import Budget

T = TypeVar("T")


class Phases:
    """Seconds each result took (exclusive of the results it asked for), and whether it was cached.

    Args:
        budget: The run's time budget (default: none).

    Attributes:
        seconds: ``{name: {"seconds": s, "cached": bool, "forward_passes": n, "tokens": n}}``,
            in the order results finished (passes and token positions as :class:`Work` counts).
        work: Everything counted so far.
    """

    def __init__(self, budget: Budget | None = None) -> None:
        self.seconds: dict[str, dict[str, Any]] = {}
        self.budget = budget or Budget()
        self.work = Work()
        # per open result: (seconds, passes, tokens) spent in the results it asked for
        self._inner: list[list[float]] = []
        self._fresh: list[bool] = []  # per open result: whether it computed (not read from disk)
        self._names: list[str] = []  # the open results, outermost first

    @contextmanager
    def timed(self, name: str, *, stored: bool) -> Iterator[None]:
        """Time the result ``name``; ``stored``: it may be read from the disk cache."""
        self._inner.append([0.0, 0, 0])
        self._fresh.append(not stored)
        self._names.append(name)
        w = self.work
        start = (time.perf_counter(), w.passes, w.tokens)
        try:
            with counting(w), self.budget.enforced(name):
                yield
        finally:
            total = [time.perf_counter() - start[0], w.passes - start[1], w.tokens - start[2]]
            inner, fresh, _ = self._inner.pop(), self._fresh.pop(), self._names.pop()
            if self._inner:
                self._inner[-1] = [a + b for a, b in zip(self._inner[-1], total, strict=True)]
            own = [a - b for a, b in zip(total, inner, strict=True)]
            self.seconds[name] = {
                "seconds": round(own[0], 3),
                "cached": not fresh,
                "forward_passes": int(own[1]),
                "tokens": int(own[2]),
            }

    def computing(self) -> None:
        """Say that the innermost open result is being computed (the disk cache missed).

        Raises:
            BudgetSpent: The run's time budget has run out: the result is not started.
        """
        if self._fresh:
            self._fresh[-1] = True
            self.budget.check(self._names[-1])  # out of time: do not start it


class Once(Generic[T]):
    """One result of a run: computed on the first ask, then its value or its error, every time.

    Args:
        name: The result's name (its phase, and its entry in the run's ``computed`` set).
        phases: Where its time is recorded (``None``: not timed).
        stored: Whether it is kept in the disk cache (so its phase may read "cached").
    """

    def __init__(self, name: str, phases: Phases | None, *, stored: bool = False) -> None:
        self.name = name
        self.stored = stored
        self._phases = phases
        self._value: T | None = None
        self._error: Exception | None = None
        self._done = False

    def __repr__(self) -> str:
        state = "failed" if self._error else "done" if self._done else "not computed"
        return f"Once({self.name}: {state})"

    @property
    def done(self) -> bool:
        """Whether it has a value."""
        return self._done

    @property
    def failed(self) -> bool:
        """Whether computing it raised."""
        return self._error is not None

    def peek(self) -> T | None:
        """The value if it has one, else ``None`` (never computes)."""
        return self._value if self._done else None

    def __call__(self, compute: Callable[[], T]) -> T:
        """The value, computing it with ``compute`` on the first ask.

        Raises:
            Exception: Whatever ``compute`` raised, the first time and every time after.
        """
        if self._error is not None:
            raise self._error
        if not self._done:
            timer = (
                self._phases.timed(self.name, stored=self.stored) if self._phases else nullcontext()
            )
            with timer, progress.phase(self.name):
                try:
                    self._value = compute()
                except Exception as exc:
                    self._error = exc
                    raise
            self._done = True
        return cast(T, self._value)
