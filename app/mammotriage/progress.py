"""A dependency-free command-line progress bar (stderr), quiet when not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class CliProgress:
    """Draw ``[#####.....] done/total label`` on stderr; redraws at most 10 times a second.

    When stderr is not a terminal (CI, pipes) it prints nothing until :meth:`close`,
    which prints one summary line.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, width: int = 30):
        self.total = max(0, int(total))
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.done = 0
        self._last = 0.0
        self._start = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        now = time.monotonic()
        if not self._tty or (now - self._last < 0.1 and done < self.total):
            return
        self._last = now
        frac = done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        note = (note[-40:]) if note else ""
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {note:<40}")
        self.stream.flush()

    def close(self) -> None:
        elapsed = time.monotonic() - self._start
        if self._tty:
            self.stream.write("\r" + " " * (self.width + len(self.label) + 60) + "\r")
        self.stream.write(f"{self.label}: {self.done}/{self.total} in {elapsed:.1f} s\n")
        self.stream.flush()
