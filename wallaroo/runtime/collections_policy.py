"""When the cyclic garbage collector does its full collections.

A full collection walks every object the process holds: with a million
partitions of state that is a stall of 100-300 ms of the event loop (and of
whichever batch or commit holds the GIL then), and CPython starts one
whenever the objects that survived earlier collections have grown by a
quarter, i.e. again and again while state grows.  A worker therefore keeps
the young generations as they are (short-lived cycles are still collected
as soon as usual) and runs full collections itself: when it has had no
input for ``IDLE_FOR`` seconds and the last one is ``IDLE_EVERY`` seconds
old, and in any case every ``AT_LEAST_EVERY`` seconds, so cycles that die
old are reclaimed under constant load too.  Reference counting frees
everything that is not part of a cycle at once, as always.
"""

from __future__ import annotations

import gc
import time

IDLE_FOR = 5.0  # seconds without input before an idle full collection
IDLE_EVERY = 60.0  # seconds between idle full collections, at least
AT_LEAST_EVERY = 600.0  # seconds between full collections, at most
_NEVER = 1 << 30  # a generation-2 threshold never reached


class FullCollections:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        now = clock()
        self.last_input = now
        self.last_full = now
        self.count = 0
        self.longest = 0.0
        t0, t1, _ = gc.get_threshold()
        gc.set_threshold(t0, t1, _NEVER)

    def input(self) -> None:
        self.last_input = self.clock()

    def due(self) -> bool:
        now = self.clock()
        since = now - self.last_full
        return since >= AT_LEAST_EVERY or (
            since >= IDLE_EVERY and now - self.last_input >= IDLE_FOR)

    def collect(self) -> float:
        """A full collection now; returns how long it took."""
        t0 = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - t0
        self.last_full = self.clock()
        self.count += 1
        self.longest = max(self.longest, took)
        return took
