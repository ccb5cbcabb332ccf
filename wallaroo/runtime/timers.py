"""When each window partition next needs to fire (the 0.6 API's windows).

A window step tells ``schedule(state, key, at)`` after each message (None:
nothing open).  After every row of input the engine asks ``due(watermark)``
for the partitions whose time has come and runs a ``Tick`` through their
window step, at the row's last lsn, so a replay fires the same windows at
the same place.  Entries are kept in a heap; a key rescheduled leaves its
old entry behind, skipped when it surfaces.

The schedule is not stored: it is rebuilt at start from the window
partitions themselves (``WorkerCore._load_windows`` loads every one).
"""

from __future__ import annotations

import heapq
from typing import Any


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str, Any]] = []
        self._at: dict[tuple[str, Any], int] = {}
        self._seq = 0  # ties: keys need not be comparable
        self.late_by_state: dict[str, int] = {}
        self.counting = True  # off while recovery replays (counted before)

    def schedule(self, state: str, key: Any, at: int | None) -> None:
        k = (state, key)
        if at is None:
            self._at.pop(k, None)
            return
        if self._at.get(k) == at:
            return
        self._at[k] = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, state, key))

    def late(self, state: str) -> None:
        if self.counting:
            self.late_by_state[state] = self.late_by_state.get(state, 0) + 1

    def earliest(self) -> int | None:
        heap, at = self._heap, self._at
        while heap:
            t, _, state, key = heap[0]
            if at.get((state, key)) == t:
                return t
            heapq.heappop(heap)
        return None

    def due(self, watermark: int) -> list[tuple[str, Any]]:
        """The partitions whose fire time is at or before ``watermark``,
        taken off the schedule (the window step puts them back)."""
        out = []
        heap, at = self._heap, self._at
        while heap and heap[0][0] <= watermark:
            t, _, state, key = heapq.heappop(heap)
            if at.get((state, key)) == t:
                del at[(state, key)]
                out.append((state, key))
        return out

    def __len__(self) -> int:
        return len(self._at)

    def forget(self, state: str, key: Any) -> None:
        self._at.pop((state, key), None)
