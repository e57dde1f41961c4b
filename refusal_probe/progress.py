"""Progress of the engine's long loops, told to whoever listens: by default, nobody.

An engine loop reports through :func:`task`, a long step without a count through :func:`phase`::

    with progress.phase("loading organism-chat"):
        model = ...
    with progress.task("generation", total=len(prompts), unit="prompt") as bar:
        for rows in batches:
            ...
            bar.update(len(rows))

Nothing listens unless a front end installs a :class:`Reporter` for a scope with
:func:`reporting`: library use and unit tests stay silent. The pytest plugin installs a
:class:`TerminalProgress` that writes to pytest's terminal. The reporter is held in a context
variable, so it belongs to the scope that installed it, not to the module.

:class:`TerminalProgress` draws tqdm bars on a terminal (``interactive``); elsewhere (a CI log) it
writes plain lines instead of redrawing: a task's state every ``interval`` seconds and its final
count, time and rate. Only the outermost task shows at a time: a loop run inside another task (the
batches of one candidate's scoring) counts silently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TextIO

from tqdm import tqdm

__all__ = ["Bar", "Reporter", "TerminalProgress", "current", "phase", "reporting", "task"]


class Bar(Protocol):
    """An open task: the loop calls :meth:`update` as it goes."""

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units done."""


class Reporter(Protocol):
    """Whatever shows progress: opens a task and closes it when the loop is done."""

    def open(self, name: str, total: float | None, unit: str, scale: float) -> Bar:
        """Start a task (``total=None``: a phase, a step without a count)."""

    def close(self, bar: Bar, failed: bool = False) -> None:
        """End a task opened by :meth:`open` (``failed``: its loop raised)."""


class _Silent:
    """The default: a reporter and a bar that do nothing."""

    def update(self, n: float = 1) -> None:
        """Count nothing."""

    def open(self, name: str, total: float | None, unit: str, scale: float) -> Bar:
        return self

    def close(self, bar: Bar, failed: bool = False) -> None:
        """Nothing to close."""


_SILENT = _Silent()
_REPORTER: ContextVar[Reporter] = ContextVar("refusal_probe_progress", default=_SILENT)


@contextmanager
def task(
    name: str, total: float | None, unit: str = "it", *, scale: float = 1.0, show: bool = True
) -> Iterator[Bar]:
    """A counted loop: ``total`` units, ``bar.update(k)`` as ``k`` more are done.

    Args:
        name: What the loop does (``"capture"``, ``"generation"``).
        total: Units the loop will do (``None``: a phase without a count).
        unit: What one unit is, singular (``"prompt"``).
        scale: Factor from counted units to shown ones (count rows, show candidates:
            ``1 / rows_per_candidate``).
        show: ``False`` counts silently, whoever listens.
    """
    reporter = _REPORTER.get() if show else _SILENT
    bar = reporter.open(name, total, unit, scale)
    try:
        yield bar
    except BaseException:
        reporter.close(bar, failed=True)
        raise
    reporter.close(bar)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """A long step without a count (loading a model, computing one result of an audit)."""
    with task(name, None, ""):
        yield


def current() -> Reporter:
    """The reporter of this scope (a silent one unless a front end installed one)."""
    return _REPORTER.get()


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Send the progress of everything run inside the block to ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield reporter
    finally:
        _REPORTER.reset(token)


class _Lines:
    """A file for tqdm that turns each redraw (a carriage return, then the state) into a line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last = ""

    def write(self, s: str) -> None:
        for part in s.replace("\r", "\n").split("\n"):
            count = part.split(" [")[0]  # the closing draw repeats the last count: once is enough
            if part.strip() and count != self._last:
                self._last = count
                self.out.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self.out.flush()


class TerminalProgress:
    """Phase lines and tqdm bars on a text stream (pytest's terminal, ``sys.stderr``).

    Args:
        out: Where to write; each write goes through ``out.write`` (so a caller can route it past
            output capture).
        interactive: A terminal that redraws a line in place (bars); otherwise plain lines.
        width: Columns of the terminal (``None``: tqdm's guess).
        interval: Seconds between the lines of a running task when not ``interactive``.
        min_seconds: A task or phase quicker than this leaves no closing line (cache hits).
        prefix: Put before every phase line.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        interactive: bool,
        width: int | None = None,
        interval: float = 30.0,
        min_seconds: float = 1.0,
        prefix: str = "refusal-probe: ",
    ) -> None:
        self.out = out
        self.interactive = interactive
        self.width = width
        self.interval = interval
        self.min_seconds = min_seconds
        self.prefix = prefix
        self._phases: list[tuple[str, float]] = []  # open phases: name, start time
        self._bar: Any = None  # the tqdm bar shown now (one at a time)

    def open(self, name: str, total: float | None, unit: str, scale: float) -> Bar:
        """A phase line, or a bar unless another one is showing."""
        if self._bar is not None:
            return _SILENT
        if total is None:
            self._phases.append((name, time.monotonic()))
            self._line(f"{name} …")
            return _Phase(name)
        desc = f"{self._phases[-1][0]}: {name}" if self._phases else name
        lines = not self.interactive
        tqdm.monitor_interval = 0  # no monitor thread: nothing redraws or holds tqdm's lock
        self._bar = tqdm(
            total=total,
            desc=self.prefix + desc,
            unit=unit,
            unit_scale=scale if scale != 1 else False,
            file=_Lines(self.out) if lines else self.out,
            ncols=None if lines else self.width,  # a log's lines are never cut
            leave=True,
            miniters=1,
            mininterval=self.interval if lines else 0.2,
            delay=self.interval if lines else self.min_seconds,
            bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
            if lines
            else None,
        )
        return self._bar  # type: ignore[no-any-return]

    def close(self, bar: Bar, failed: bool = False) -> None:
        """The closing line of a task that took long enough, or of a phase."""
        if isinstance(bar, _Phase) and self._phases and self._phases[-1][0] == bar.name:
            name, start = self._phases.pop()
            took = tqdm.format_interval(time.monotonic() - start)
            if failed:
                self._line(f"{name} stopped after {took}")
            elif time.monotonic() - start >= self.min_seconds:
                self._line(f"{name} done in {took}")
        elif bar is self._bar and bar is not None:
            self._bar = None
            if time.time() - bar.start_t >= self.min_seconds and not bar.disable:  # tqdm's clock
                bar.delay = 0  # say how it ended even if it never drew (a quick task in a log)
            bar.close()

    def _line(self, text: str) -> None:
        self.out.write(f"{self.prefix}{text}\n")
        self.out.flush()


class _Phase:
    """An open phase of :class:`TerminalProgress` (it has no count)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def update(self, n: float = 1) -> None:
        """A phase has no count."""
