"""Progress on pytest's terminal: the engine's phases and bars, past pytest's output capture.

Written through the terminal reporter's writer with capture suspended (as pytest's live logging
does), so it reaches the terminal even from inside a test, and never a test's captured output
(nor the HTML report, which shows that). Off under ``-q``, for ``--collect-only`` and in
pytest-xdist workers (they have no terminal).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from refusal_probe.progress import TerminalProgress, reporting


class _TerminalStream:
    """A text stream onto pytest's terminal that writes past output capture."""

    def __init__(self, config: pytest.Config) -> None:
        self.capman = config.pluginmanager.getplugin("capturemanager")
        self.reporter = config.pluginmanager.getplugin("terminalreporter")
        self.tw = config.get_terminal_writer()
        self._mid_line = False  # a bar of ours is on the current line (redrawn with \r)

    def write(self, s: str) -> None:
        if not s:
            return
        with self.capman.global_and_fixture_disabled() if self.capman else ExitStack():
            if not self._mid_line:  # off the line of test dots; pytest starts a new one after
                self.reporter.ensure_newline()
                if self.tw.width_of_current_line:
                    self.tw.line()
            self.tw.write(s, flush=True)
            self._mid_line = not s.endswith("\n")

    def flush(self) -> None:
        self.tw.flush()


@contextmanager
def terminal_progress(config: pytest.Config) -> Iterator[None]:
    """Show the engine's progress on the terminal for the block, where it belongs."""
    quiet = config.get_verbosity() < 0 or config.option.collectonly
    has_terminal = config.pluginmanager.getplugin("terminalreporter") is not None
    if quiet or hasattr(config, "workerinput") or not has_terminal:
        yield
        return
    stream = _TerminalStream(config)
    interactive = sys.stdout.isatty()
    with reporting(TerminalProgress(stream, interactive=interactive, width=stream.tw.fullwidth)):
        yield
