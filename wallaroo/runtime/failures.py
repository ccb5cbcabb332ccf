"""Counting and reporting failures of user functions (DESIGN.md contract 6).

Every failure is counted per step; the log gets the first ones in full and
then one line per thousand, so a stream of bad input cannot drown the log."""

from __future__ import annotations

import logging
from collections import Counter

LOG_FIRST = 20
LOG_EVERY = 1000


class FailureLog:
    def __init__(self, cell: list[int], log: logging.Logger | None,
                 first: int = LOG_FIRST, every: int = LOG_EVERY):
        self.cell = cell
        self.log = log
        self.first = first
        self.every = every
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.indices: list[int] = []  # failed frame indices in the current chunk
        self.origin = ""

    def start_chunk(self, origin: str) -> None:
        self.origin = origin
        self.indices = []

    def fail(self, step: str, exc: BaseException) -> None:
        idx = self.cell[0]
        if not self.indices or self.indices[-1] != idx:
            self.indices.append(idx)
        self.total += 1
        self.counts[step] += 1
        n = self.counts[step]
        if self.log is not None and (n <= self.first or n % self.every == 0):
            more = "" if n <= self.first else f" ({n} failures of this step so far)"
            self.log.warning(
                "%s failed on message %d of %s: %s: %s; message skipped%s",
                step, idx, self.origin, type(exc).__name__, exc, more)
