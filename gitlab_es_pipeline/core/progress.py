"""How far a long step has got, said now and then: done out of the total, and the rate.

A full load of a large repository takes minutes; without this the run log is silent between
the step's start and its end. No Dagster here: the step passes its logger's `info`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Reports at most once every `every` seconds (0: on every update), and once at the end."""

    def __init__(
        self,
        what: str,
        unit: str,
        report: Callable[[str], None],
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.unit = unit
        self.report = report
        self.every = every
        self.clock = clock
        self.started = clock()
        self.last = self.started
        self.done = 0
        self.total: int | None = None
        self.lines = 0

    def update(self, done: int, total: int | None = None, lines: int | None = None) -> None:
        self.done, self.total = done, total
        if lines is not None:
            self.lines = lines
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.report(self.message(now))

    def finish(self) -> None:
        self.report(self.message(self.clock(), final=True))

    def message(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self.started, 1e-9)
        of = f" of {self.total:,}" if self.total is not None else ""
        lines = f", {self.lines:,} lines" if self.lines else ""
        rate = (self.lines or self.done) / elapsed
        per = "lines" if self.lines else self.unit
        return (
            f"{self.what}: {'done, ' if final else ''}{self.done:,}{of} {self.unit}{lines} "
            f"in {elapsed:.0f} s ({rate:,.0f} {per}/s)"
        )
