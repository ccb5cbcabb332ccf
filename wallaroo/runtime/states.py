"""The partitions of one state name, and how they become dirty and clean.

A partition is dirty from the first batch that ran a state step on it until
a snapshot absorbs it.  ``DirtyTracker`` keeps dirty partitions grouped by
the lsn of the batch that first dirtied them, oldest first, so both
``replay_from`` (the oldest group) and an incremental checkpoint (snapshot
the oldest partitions first) cost O(1) per partition, not O(dirty keys) per
commit.
"""

from __future__ import annotations

from typing import Any

from .._spec import StateSpec
from ..recovery import snapshots
from ..recovery.errors import UnpicklableState

_U64_MAX = 2 ** 64 - 1


class PartitionKeyError(Exception):
    """A partition function returned a key that cannot name a partition."""


GROUP_CACHE_MAX = 1 << 20  # keys whose group is remembered


class StateSpace:
    """All partitions of one state name on this worker."""

    def __init__(self, spec: StateSpec, durable: bool = False, placement=None):
        self.spec = spec
        self.name = spec.name
        self.durable = durable
        self.placement = placement  # runtime.placement.Placement, or None
        self.groups: dict[Any, int] = {}  # key -> key group (a cache)
        # durable mode: key -> pickled key, for partitions not yet written
        self.key_blobs: dict[Any, bytes] = {}
        self.parts: dict[Any, Any] = {}  # key -> state object
        self.pids: dict[Any, int] = {}  # key -> partition id, once durable
        self.snap_lsn: dict[Any, int] = {}  # key -> lsn its snapshot absorbed
        self.touched: set = set()  # keys a step ran on in this batch
        self.to_save: set = set()  # keys whose step asked save_state
        self.dirty: dict[Any, int] = {}  # key -> lsn of the batch that dirtied it

    def build_declared(self) -> None:
        """Create the declared partitions (and the single partition of an
        unpartitioned state) that recovery did not bring back."""
        p = self.placement
        for key in self.spec.keys:
            if p is not None and p.size > 1 and p.owners[self.group_of(key)] != p.me:
                continue  # another worker's
            if key not in self.parts:
                if self.durable and key not in self.pids:
                    self.key_blobs[key] = snapshots.dumps(
                        key, f"declared partition key {key!r} of state "
                             f"{self.name!r}")[0]
                self.parts[key] = self.spec.factory()

    def create(self, key: Any) -> Any:
        """A partition for a key seen for the first time; raises what the
        state's constructor raises, or PartitionKeyError.  With resilience
        the key is pickled here, once, so a key that cannot be made durable
        costs the message that brought it, not the worker."""
        if self.spec.partitioning == "u64" and (
                isinstance(key, bool) or not isinstance(key, int)
                or not 0 <= key <= _U64_MAX):
            raise PartitionKeyError(
                f"to_state_partition_u64 state {self.name!r}: the partition "
                f"function returned {key!r}, not an int in 0..2**64-1")
        if self.durable:
            try:
                blob = snapshots.dumps(key, f"partition key {key!r}")[0]
            except UnpicklableState as e:
                raise PartitionKeyError(
                    f"returned key {key!r:.80} of state {self.name!r}, which "
                    f"cannot be pickled, so its partition cannot be made "
                    f"durable: {e.__cause__ or e}") from None
        state = self.spec.factory()
        if self.durable:
            self.key_blobs[key] = blob
        self.parts[key] = state
        return state

    def group_of(self, key: Any) -> int:
        """The key group of ``key`` (cached; raises TypeError for an
        unhashable key)."""
        groups = self.groups
        g = groups.get(key)
        if g is None:
            g = self.placement.group_of(self.spec, key) if self.placement else -1
            if len(groups) >= GROUP_CACHE_MAX:  # keys of other workers too:
                groups.clear()                  # bounded, not remembered forever
            groups[key] = g
        return g

    def describe_key(self, key: Any) -> str:
        if self.spec.partitioning == "single":
            return f"state {self.name!r} ({self.spec.class_name})"
        return f"state {self.name!r} ({self.spec.class_name}) key {key!r}"


class DirtyTracker:
    """Dirty partitions of every state, grouped by the batch that first
    dirtied them."""

    def __init__(self) -> None:
        # first-dirty lsn -> {(space, key): None}, oldest first
        self._groups: dict[int, dict[tuple[StateSpace, Any], None]] = {}
        self._since: dict[int, float] = {}  # first-dirty lsn -> clock time
        self.count = 0

    def mark(self, space: StateSpace, keys, lsn: int, now: float) -> None:
        dirty = space.dirty
        group = None
        for key in keys:
            if key not in dirty:
                dirty[key] = lsn
                if group is None:
                    group = self._groups.get(lsn)
                    if group is None:
                        group = self._groups[lsn] = {}
                        self._since[lsn] = now
                group[(space, key)] = None
                self.count += 1

    def clean(self, space: StateSpace, key: Any) -> bool:
        lsn = space.dirty.pop(key, None)
        if lsn is None:
            return False
        group = self._groups[lsn]
        del group[(space, key)]
        if not group:
            del self._groups[lsn]
            del self._since[lsn]
        self.count -= 1
        return True

    def oldest_lsn(self) -> int | None:
        for lsn in self._groups:
            return lsn
        return None

    def oldest_since(self, skip=None) -> float | None:
        """When the oldest dirty partition (leaving out those ``skip(item)``
        is true for) became dirty (clock time)."""
        if skip is None:
            for t in self._since.values():
                return t
            return None
        for lsn, group in self._groups.items():
            if any(not skip(item) for item in group):
                return self._since[lsn]
        return None

    def take_oldest(self, n: int, skip=None) -> list[tuple[StateSpace, Any]]:
        """Up to ``n`` dirty partitions, oldest first, leaving out those
        ``skip(item)`` is true for (nothing is cleaned)."""
        out: list[tuple[StateSpace, Any]] = []
        if n <= 0:
            return out
        for group in self._groups.values():
            for item in group:
                if skip is not None and skip(item):
                    continue
                out.append(item)
                if len(out) >= n:
                    return out
        return out

