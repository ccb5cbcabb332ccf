"""The engine's side of the 0.6 API's windows: the clock they read, the
schedule of partitions waiting to fire, and clock ticks (docs/windows.md).

- Every batch gets one ingest time (``time.time_ns()``, never behind the
  previous batch's), recorded on each of its input rows.  While a row
  runs, ``CLOCK.now`` is that time: the event time of its messages and the
  worker's watermark.  A replay sets it from the row, so messages land in
  the same windows and windows fire at the same place.
- After each row the partitions whose windows the watermark has passed
  fire, at the row's last lsn (``fire_due``).
- A worker with nothing to do and a window due logs a **tick**: an input
  row with no message and one lsn (connector ``tick``), whose time moves
  the watermark with the clock, so windows close on an idle stream.
- At start every window partition is loaded and scheduled
  (``load_windows``): the schedule is not stored, the partitions are.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .._keyed import CLOCK, Tick
from ..connectors.base import TICK
from .timers import Timers

# An idle worker ticks at most this often (seconds) while a window is due.
TICK_EVERY = 0.1


def tick_appliers(app, entries: list) -> dict[str, Callable]:
    """For each window state, the ``apply(key, item)`` of its step in the
    first pipeline that has it (a merged step is one state)."""
    out: dict[str, Callable] = {}
    for p in app.pipelines:
        for i, step in enumerate(p.steps):
            if step.kind == "state" and step.state not in out and \
                    app.state(step.state).next_fire is not None:
                out[step.state] = entries[p.index][i][1]
    return out


class Windowing:
    """Mixed into ``WorkerCore``."""

    timers: Timers | None
    clock_ns: int
    now_ns: Callable[[], int]

    def _init_windows(self, app) -> None:
        windowed = [s for s in app.states if s.next_fire is not None]
        self.timers = Timers() if windowed else None
        self.clock_ns = 0  # the last ingest time given
        self.now_ns = time.time_ns  # tests inject a clock
        self._last_tick = 0.0

    def _batch_time(self) -> int:
        """The ingest time of a new batch (0 without windows)."""
        if self.timers is None:
            return 0
        t = self.now_ns()
        if t < self.clock_ns:
            t = self.clock_ns
        self.clock_ns = t
        CLOCK.timers = self.timers
        CLOCK.now = t
        return t

    def fire_due(self, lsn: int, appliers: dict, ctx, rebuild: bool) -> None:
        """Fire, at ``lsn``, the windows the watermark (``CLOCK.now``) has
        passed.  In a replay a partition whose snapshot is newer than
        ``lsn`` already holds what this fired: it stays scheduled."""
        timers = self.timers
        due = timers.due(CLOCK.now)
        if not due:
            return
        ctx.base = lsn
        ctx.cell[0] = 0
        for state, key in due:
            if rebuild and self.spaces[state].snap_lsn.get(key, -1) >= lsn:
                timers.schedule(state, key, CLOCK.now)
                continue
            appliers[state](key, Tick(key))

    def tick_due(self) -> bool:
        """Whether an idle worker should log a tick now."""
        timers = self.timers
        if timers is None:
            return False
        first = timers.earliest()
        if first is None or first > self.now_ns():
            return False
        now = time.monotonic()
        if now - self._last_tick < TICK_EVERY:
            return False
        self._last_tick = now
        return True

    def load_windows(self) -> int:
        """Load every stored window partition and schedule it; returns how
        many."""
        timers = self.timers
        if timers is None:
            return 0
        n = 0
        keys_of = getattr(self.store, "keys_of", None)
        for space in self.spaces.values():
            next_fire = space.spec.next_fire
            if next_fire is None:
                continue
            if keys_of is not None and self.durable:
                for key in keys_of(space.name):
                    if key not in space.parts:
                        space.create(key)
            for key, st in space.parts.items():
                timers.schedule(space.name, key, next_fire(st))
                n += 1
        return n

    def replay_clock(self, row) -> None:
        """Before a replayed row runs."""
        if self.timers is not None and row.ingest_ns:
            CLOCK.timers = self.timers
            CLOCK.now = row.ingest_ns
            if row.ingest_ns > self.clock_ns:
                self.clock_ns = row.ingest_ns


def tick_chunk(chunk_type) -> Any:
    """An input chunk that is a clock tick."""
    return chunk_type(source=-1, payloads=[b""], frames=b"", origin="clock tick",
                      connector=TICK)
