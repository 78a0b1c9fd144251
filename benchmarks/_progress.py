"""Progress reporting for `statemesh bench` suites: a rich bar on a terminal, lines otherwise.

Everything goes to stderr, so stdout carries only the result (one JSON object with
`--json`). On a terminal, `rich` draws a live bar per phase; when stderr is a file or a
pipe (CI logs, tests), the same calls print a few plain lines instead: the start of a
phase, every tenth of it, and its end, so logs stay short whatever the phase's size.

Invariants: a `Phase` never raises from `advance` past its total (it is clamped), and
leaving the `with` block always ends the bar, even on an error, so a traceback is not
drawn over a half-finished bar.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

__all__ = ["Phase", "note", "phase"]


def _interactive(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def note(suite: str, message: str, *, stream: TextIO | None = None) -> None:
    """Print one progress line `[bench SUITE] message` to stderr."""
    print(f"[bench {suite}] {message}", file=stream or sys.stderr, flush=True)


class Phase:
    """One phase of a suite with `total` steps; call `advance` as steps complete."""

    def __init__(self, suite: str, description: str, total: int, stream: TextIO) -> None:
        self.suite = suite
        self.description = description
        self.total = max(1, int(total))
        self.done = 0
        self._stream = stream
        self._rich = None
        self._task = None
        self._next_tenth = 1

    def _start(self) -> None:
        if _interactive(self._stream):
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._rich = Progress(
                TextColumn(f"[bold]bench {self.suite}[/bold] {{task.description}}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self._stream),
                transient=False,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total)
        else:
            note(self.suite, f"{self.description}: 0/{self.total}", stream=self._stream)

    def advance(self, n: int = 1) -> None:
        """Record `n` more completed steps (clamped to the total)."""
        self.done = min(self.total, self.done + n)
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
            return
        # Plain lines: one per tenth reached, so a million steps still log ten lines.
        tenth = self.done * 10 // self.total
        if tenth >= self._next_tenth and self.done < self.total:
            self._next_tenth = tenth + 1
            note(self.suite, f"{self.description}: {self.done}/{self.total}", stream=self._stream)

    def describe(self, description: str) -> None:
        """Change the phase's label (e.g. to show a running figure)."""
        self.description = description
        if self._rich is not None:
            self._rich.update(self._task, description=description)

    def _finish(self) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
            self._rich.stop()
        else:
            note(self.suite, f"{self.description}: {self.done}/{self.total}", stream=self._stream)


@contextlib.contextmanager
def phase(
    suite: str, description: str, total: int, *, stream: TextIO | None = None
) -> Iterator[Phase]:
    """A progress bar (or plain lines) for one phase of `total` steps, ended on exit."""
    p = Phase(suite, description, total, stream or sys.stderr)
    p._start()
    try:
        yield p
    finally:
        p._finish()
