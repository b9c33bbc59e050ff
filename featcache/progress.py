"""Progress on a terminal and in logs.

On a terminal a rich progress bar; where stdout is not a terminal (a Slurm task's log, CI, a
pipe into ``tee``), a bar's redraws are unreadable, so plain lines are printed instead, every
``FEATCACHE_PROGRESS_EVERY`` seconds (default 30) and once at the end:

    extract: 120/1000 videos (12%), 8.1 frames/s, 0:02:10 elapsed, ~0:15:53 left
"""
from __future__ import annotations

import datetime
import os
import sys
import time


def progress(label: str, unit: str, columns: tuple, disable: bool = False, every_s: float | None = None):
    """A context manager with rich's ``add_task(name, total=, **fields)`` and ``update(task,
    advance=, **fields)``: a rich Progress over ``columns`` on a terminal, else PlainProgress."""
    if disable or sys.stdout.isatty():
        from rich.progress import Progress

        return Progress(*columns, disable=disable)
    every = every_s if every_s is not None else float(os.environ.get("FEATCACHE_PROGRESS_EVERY", "30"))
    return PlainProgress(label, unit, every)


class PlainProgress:
    """Periodic plain progress lines (one task at a time, as featcache's loops use it)."""

    def __init__(self, label: str, unit: str, every_s: float):
        self.label, self.unit, self.every_s = label, unit, every_s
        self.total, self.done, self.fields = 0, 0, {}
        self.start = self.last = time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.total and exc[0] is None:
            self._print()
        return False

    def add_task(self, name: str, total: int, completed: int = 0, **fields) -> int:
        self.total, self.done, self.fields = total, completed, fields
        self.start = self.last = time.monotonic()
        return 0

    def update(self, task: int, advance: int = 0, **fields) -> None:
        self.done += advance
        self.fields.update(fields)
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            self._print()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%)"]
        parts += [str(v) for v in self.fields.values() if str(v)]
        parts.append(f"{_clock(elapsed)} elapsed")
        if 0 < self.done < self.total:
            parts.append(f"~{_clock(elapsed / self.done * (self.total - self.done))} left")
        return ", ".join(parts)

    def _print(self) -> None:
        print(self.line(), flush=True)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))
