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
        self.position: int | None = None
        self.payloads: list[bytes] = []

    def start_chunk(self, origin: str, position: int | None = None,
                    payloads: list[bytes] | None = None) -> None:
        """``position``: the first message's place in its connection or
        stream (0-based), so a log line names the message a user can find."""
        self.origin = origin
        self.position = position
        self.payloads = payloads or []
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
            where = idx if self.position is None else self.position + idx
            excerpt = ""
            if idx < len(self.payloads):
                p = self.payloads[idx]
                excerpt = f" (bytes {p[:32]!r}{'...' if len(p) > 32 else ''})"
            self.log.warning(
                "%s failed on message %d of %s%s: %s: %s; message skipped%s",
                step, where, self.origin, excerpt, type(exc).__name__, exc,
                more, exc_info=_user_traceback(exc))


    def fail_unindexed(self, step: str, exc: BaseException) -> None:
        """A failure found after the batch ran (a message that cannot be
        serialized for another worker): counted and logged like any, with
        no place in the chunk."""
        self.total += 1
        self.counts[step] += 1
        n = self.counts[step]
        if self.log is not None and (n <= self.first or n % self.every == 0):
            more = "" if n <= self.first else f" ({n} failures of this step so far)"
            self.log.warning("%s: %s; message dropped%s", step, exc, more)


def _user_traceback(exc: BaseException):
    """Errors in user code carry the user's file and line (DESIGN.md §8):
    the traceback without the engine's own frames."""
    tb = exc.__traceback__
    while tb is not None and "/wallaroo/runtime/" in tb.tb_frame.f_code.co_filename:
        tb = tb.tb_next
    if tb is None:
        return None
    return (type(exc), exc, tb)
