"""Each shared result of a run computed at most once, and where the run's time went.

A :class:`Once` holds one result of an :class:`~refusal_probe.audit.run.AuditRun`: empty, its
value, or the error computing it raised (raised again on every later ask, without recomputing).
:class:`Phases` times each result without the results it asked for, so the phases of a run add
up to at most its duration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Generic, TypeVar, cast

from refusal_probe import progress

T = TypeVar("T")


class Phases:
    """Seconds each result took (exclusive of the results it asked for), and whether it was cached.

    Attributes:
        seconds: ``{name: {"seconds": s, "cached": bool}}``, in the order results finished.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, Any]] = {}
        self._inner: list[float] = []  # per open result: seconds spent in results it asked for
        self._fresh: list[bool] = []  # per open result: whether it computed (not read from disk)

    @contextmanager
    def timed(self, name: str, *, stored: bool) -> Iterator[None]:
        """Time the result ``name``; ``stored``: it may be read from the disk cache."""
        self._inner.append(0.0)
        self._fresh.append(not stored)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            total = time.perf_counter() - t0
            inner, fresh = self._inner.pop(), self._fresh.pop()
            if self._inner:
                self._inner[-1] += total
            self.seconds[name] = {"seconds": round(total - inner, 3), "cached": not fresh}

    def computing(self) -> None:
        """Say that the innermost open result is being computed (the disk cache missed)."""
        if self._fresh:
            self._fresh[-1] = True


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
