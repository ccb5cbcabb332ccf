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
from ..recovery.errors import CorruptionError, StoreError, UnpicklableState
from .attribute_layout import inline_copy
from .placement import stable_hash
from .sharded import MASK as SHARD_MASK, ShardedDict

_U64_MAX = 2 ** 64 - 1


class PartitionKeyError(Exception):
    """A partition function returned a key that cannot name a partition."""


GROUP_CACHE_MAX = 1 << 20  # keys whose group is remembered


class StoredState:
    """A partition a live move handed this worker, kept as the bytes it
    came in (its snapshot as of lsn ``lsn``) in ``StateSpace.leaving`` until
    the commit that stores it lands, instead of being loaded
    (runtime/live_moves.py): with a state cache, a move of many partitions
    does not bring them all into memory.  ``create`` loads it if a message
    needs it sooner."""

    __slots__ = ("kblob", "blob", "pickler", "refs", "lsn")

    def __init__(self, kblob: bytes, blob: bytes, pickler: str, refs: tuple,
                 lsn: int):
        self.kblob, self.blob, self.pickler = kblob, blob, pickler
        self.refs, self.lsn = refs, lsn


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
        # the bookkeeping of every partition: sharded, so that a million of
        # them never resize at once (sharded.py)
        self.pids = ShardedDict()  # key -> partition id, once durable
        self.snap_lsn = ShardedDict()  # key -> lsn its snapshot absorbed
        self.touched: set = set()  # keys a step ran on in this batch
        self.to_save: set = set()  # keys whose step asked save_state
        self.dirty = ShardedDict()  # key -> lsn of the batch that dirtied it
        # Partitions not in memory (DESIGN.md §4, "State at scale"):
        # ``finder(state, key_hash)`` looks one up in the store (None: the
        # store has none of this state); ``leaving`` holds the partitions
        # evicted in a commit that has not landed yet (key -> (state, pid,
        # record number)); ``recent`` (shared by every state, None without
        # --state-cache) orders (space, key) from least recently used.
        self.finder = None
        self.leaving: dict[Any, tuple] = {}
        self.recent: dict | None = None
        self.serializer = None  # the application's (serialize, deserialize)
        self.created = [0]  # partitions created (the batch's count: Context)
        self.loaded = 0  # partitions loaded from the store
        # replay_from when the store was opened, and the store's file: a
        # stored partition without a snapshot must have been created at or
        # after it (before it, the log it would be rebuilt from is gone)
        self.replay_floor = 0
        self.store_path = "the store"

    def build_declared(self) -> None:
        """Create the declared partitions (and the single partition of an
        unpartitioned state) that recovery did not bring back."""
        p = self.placement
        for key in self.spec.keys:
            if p is not None and p.size > 1 and p.owners[self.group_of(key)] != p.me:
                continue  # another worker's
            if key not in self.parts:
                self.create(key)

    def create(self, key: Any) -> Any:
        """The partition of a key not in memory: one evicted in a commit
        still under way, else the store's, else a new one.  A new one
        raises what the state's constructor raises, or PartitionKeyError;
        a damaged or unloadable stored one raises StoreError (the worker
        stops: it is not the message's fault).  With resilience a new key
        is pickled here, once, so a key that cannot be made durable costs
        the message that brought it, not the worker."""
        if self.leaving:
            back = self.leaving.pop(key, None)
            if back is not None:
                state = back[0]
                if type(state) is StoredState:
                    self.snap_lsn[key] = state.lsn
                    state = self._unstore(key, state)
                    state = inline_copy(state, 1)  # attribute_layout.py
                    self.loaded += 1
                self._place(key, state, back[1])
                return state
        if self.finder is not None:
            found = self._load(key)
            if found is not None:
                return found
        return self._new(key)

    def peek(self, key: Any) -> Any:
        """The state of ``key`` wherever it is, as ``create`` would find it,
        without placing it in memory (tests and tools); KeyError for a key
        that has no partition."""
        if key in self.parts:
            return self.parts[key]
        back = self.leaving.get(key)
        if back is not None:
            if type(back[0]) is StoredState:
                return self._unstore(key, back[0])
            return back[0]
        if self.finder is not None:
            state = self._load(key, place=False)
            if state is not None:
                return state
        if key in self.spec.keys or self.spec.partitioning == "single":
            return self.spec.factory()  # never used: as it was built
        raise KeyError(key)

    def _place(self, key: Any, state: Any, pid: int | None) -> None:
        self.parts[key] = state
        if pid is not None:
            self.pids[key] = pid
        if self.recent is not None:
            self.recent[(self, key)] = None

    def _unstore(self, key: Any, stored: StoredState) -> Any:
        try:
            return snapshots.loads(stored.blob, stored.pickler, self.serializer)
        except Exception as e:
            raise StoreError(
                f"cannot load the snapshot of {self.describe_key(key)}, handed "
                f"over by a live move: {type(e).__name__}: {e} (was the state "
                f"class renamed or moved?)") from e

    def _load(self, key: Any, place: bool = True) -> Any:
        """The stored partition of ``key`` (None: there is none), found by
        the key's stable hash and Python's ``==`` on the stored keys, its
        snapshot's checksum checked before anything is computed from it.
        ``place=False``: only read it (tests and tools)."""
        for prow, snapshot_of in self.finder(self.name, stable_hash(key)):
            try:
                stored = snapshots.loads(prow.key)
            except Exception as e:
                raise StoreError(f"cannot load the key of partition {prow.pid} "
                                 f"(state {self.name!r}, key {prow.key_repr}): "
                                 f"{type(e).__name__}: {e}") from e
            if not (stored is key or stored == key):
                continue
            snap = snapshot_of(prow)
            if snap is None:
                if prow.created_lsn < self.replay_floor:
                    raise CorruptionError(
                        f"{self.store_path}: partition {prow.pid} (state "
                        f"{self.name!r}, key {prow.key_repr}) has no snapshot, "
                        f"but the input log before lsn {self.replay_floor} it "
                        f"would be rebuilt from is gone: its snapshot row is "
                        f"missing or damaged; refusing to run on damaged state")
                state = self.spec.factory()  # no snapshot yet: replay builds it
            else:
                try:
                    state = snapshots.loads(snap.blob, snap.pickler, self.serializer)
                except Exception as e:
                    raise StoreError(
                        f"cannot load the snapshot of partition {prow.pid} "
                        f"({self.describe_key(key)}): {type(e).__name__}: {e} "
                        f"(was the state class renamed or moved?)") from e
            if not place:
                return state
            if snap is not None:
                state = inline_copy(state, 1)  # attribute_layout.py
                self.snap_lsn[key] = snap.lsn
            if prow.key_group >= 0 and self._routed():
                self.groups[key] = prow.key_group
            self._place(key, state, prow.pid)
            self.loaded += 1
            return state
        return None

    def evict(self, key: Any, number: int | None) -> None:
        """Drop a clean partition from memory.  ``number``: the record
        whose commit holds its latest snapshot, kept in ``leaving`` until
        that commit lands (None: the store already has it)."""
        state = self.parts.pop(key)
        pid = self.pids.pop(key, None)
        self.snap_lsn.pop(key, None)
        self.key_blobs.pop(key, None)
        if self.recent is not None:
            self.recent.pop((self, key), None)
        if number is not None:
            self.leaving[key] = (state, pid, number)

    def _new(self, key: Any) -> Any:
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
            self.created[0] += 1
        self._place(key, state, None)
        return state

    def _routed(self) -> bool:
        p = self.placement
        return p is not None and p.size > 1

    def group_of(self, key: Any, key_hash: int | None = None) -> int:
        """The key group of ``key`` (raises TypeError for an unhashable
        key); ``key_hash``: its stable hash, when known.  Cached on a
        cluster, where every message is routed by it; a worker on its own
        needs it only for a new partition's row, and a cache of every key
        would only hold memory (and keep freed state's memory from going
        back to the system)."""
        groups = self.groups
        g = groups.get(key)
        if g is None:
            g = (self.placement.group_of(self.spec, key, key_hash)
                 if self.placement else -1)
            if self._routed():
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
        shards = space.dirty.shards  # a loop over many keys: no method calls
        group = None
        for key in keys:
            dirty = shards[hash(key) & SHARD_MASK]
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

