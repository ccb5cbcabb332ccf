"""What a batch boundary does with the partitions: new partitions' rows,
dirty marks, the snapshots a commit takes (checkpoints, ``save_state``,
evictions) and which partitions leave memory (``--state-cache``).  Part of
``WorkerCore`` (``core.py``), which holds the state spaces, the store and
the clock these read.
"""

from __future__ import annotations

import time

from ..recovery import snapshots
from ..recovery.records import PartitionRow, SnapshotRow
from .attribute_layout import inline_copy
from .placement import stable_hash
from .sharded import MASK as SHARD_MASK
from .states import StateSpace

# A partition whose snapshot cost at least SLOW_SNAPSHOT seconds (pickling,
# plus writing its bytes at SNAPSHOT_WRITE_RATE, about what SQLite manages
# here) is left out of periodic checkpoints for SNAPSHOT_SPACING times that
# long afterwards (WorkerCore._held_back).
SLOW_SNAPSHOT = 0.05
SNAPSHOT_SPACING = 10
SNAPSHOT_WRITE_RATE = 100e6  # bytes per second
# A batch (with a deadline: not replay) stops taking messages once it has
# created this many partitions: each is a row of its commit, and the
# commit thread's Python work for it (the row, its checksum, its key-index
# entry) competes with the loop for the GIL.
MAX_NEW_PARTITIONS = 2000
# ... and once it has touched this many partitions: at its boundary each is
# marked dirty (and maybe snapshotted), about 3.5 µs apiece in Python (36
# ms for 10,000 touched and 1,000 snapshots at 1,000,000 keys), on the loop.
MAX_TOUCHED = 5000


class Checkpoints:
    """Mixed into ``WorkerCore``."""

    def _purge_leaving(self) -> None:
        """Partitions evicted in commits that have landed are in the
        store now: ``leaving`` lets go of them."""
        landed = getattr(self.store, "landed", 0)
        q = self._leaving
        while q and q[0][0] <= landed:
            number, space, key = q.popleft()
            entry = space.leaving.get(key)
            if entry is not None and entry[2] == number:
                del space.leaving[key]

    def _coldest(self, clean_only: bool) -> list:
        """The least recently used partitions beyond the state cache, as
        (space, key); ``clean_only``: none a step touched or left dirty."""
        excess = len(self.recent) - self.state_cache
        out: list = []
        if excess <= 0:
            return out
        for item in self.recent:
            space, key = item
            if clean_only and (key in space.touched or key in space.dirty):
                continue
            out.append(item)
            if len(out) >= excess:
                break
        return out

    def _evict_cold(self, wanted: dict) -> list:
        """The partitions to evict at this batch boundary; each dirty one
        joins this commit's snapshots (they are evicted once pickled)."""
        cold = self._coldest(clean_only=False)
        for space, key in cold:
            if key in space.dirty:
                wanted.setdefault(space, set()).add(key)
        return cold

    def evict_clean(self) -> None:
        """During replay: evict the least recently used partitions beyond
        the state cache that replay has not touched (their snapshots are
        the store's; the touched ones must stay until a commit)."""
        if self.recent is None:
            return
        for space, key in self._coldest(clean_only=True):
            space.evict(key, None)
            self.evictions += 1

    def _save_due(self, now: float) -> bool:
        return any(pend and next(iter(pend.values())) <= now
                   for pend in self._save_pending.values())

    def _due_saves(self, now: float, wanted: dict) -> None:
        """The save_state requests whose interval has passed (each space's
        requests are in the order they came, so due times are in order)."""
        for space, pend in self._save_pending.items():
            while pend:
                key = next(iter(pend))
                if pend[key] > now:
                    break
                del pend[key]
                wanted.setdefault(space, set()).add(key)

    def _bookkeeping(self, first_lsn: int, end_lsn: int, force: bool = False):
        """New partition rows, dirty marks and the snapshots this commit
        takes: partitions that asked save_state, the oldest dirty ones when a
        checkpoint is due (at most ``checkpoint_max``), and every dirty
        partition of a state downstream of one being snapshotted."""
        now = self.clock()
        tracker = self.tracker
        new_rows: list[PartitionRow] = []
        wanted: dict[StateSpace, set] = {}
        recent = self.recent
        for space in self.spaces.values():
            touched = space.touched
            if touched:
                shards = space.pids.shards  # many keys: no method calls
                for key in touched:
                    if key not in shards[hash(key) & SHARD_MASK]:
                        new_rows.append(self._new_partition(space, key, first_lsn))
                tracker.mark(space, touched, first_lsn, now)
                if recent is not None:  # most recently used last
                    for key in touched:
                        item = (space, key)
                        recent.pop(item, None)
                        recent[item] = None
                touched.clear()
            if space.to_save:
                if self.save_state_interval <= 0:
                    wanted[space] = set(space.to_save)
                else:  # coalesced: at most one snapshot per interval
                    pend = self._save_pending.setdefault(space, {})
                    due = now + self.save_state_interval
                    for key in space.to_save:
                        if key not in pend:
                            pend[key] = due
                space.to_save.clear()
        if self._save_pending:
            self._due_saves(now, wanted)
        if self._must_save:  # a live move's (live_moves.py)
            for space, keys in self._must_save.items():
                wanted.setdefault(space, set()).update(keys)
            self._must_save = {}
        checkpointed = 0
        if force or self._checkpoint_due(now):
            held = None if force or not self._held else self._held_back(now)
            for space, key in tracker.take_oldest(self.checkpoint_max, held):
                keys = wanted.setdefault(space, set())
                if key not in keys:
                    keys.add(key)
                    checkpointed += 1
        cold = self._evict_cold(wanted) if recent is not None else ()
        for space in list(wanted):
            for down in self.downstream[space.name]:
                if down.dirty:
                    wanted.setdefault(down, set()).update(down.dirty)
        snaps: list[SnapshotRow] = []
        lsn = end_lsn - 1
        t0 = time.perf_counter()
        held = self._held
        for space, keys in wanted.items():
            parts, pids = space.parts, space.pids
            for key in keys:
                if key not in space.dirty:
                    continue
                t1 = time.perf_counter()
                state = parts[key]
                blob, pickler, refs = snapshots.dumps_state(
                    state, space.describe_key(key), self.app.serializer)
                # pickling moved its attributes into a dict: lay them out
                # inline again (attribute_layout.py)
                parts[key] = inline_copy(state, 2)  # `state` and parts
                # pickling holds the loop; writing the rows holds every
                # output behind this commit
                cost = time.perf_counter() - t1 + len(blob) / SNAPSHOT_WRITE_RATE
                if cost >= SLOW_SNAPSHOT:
                    held[(space.name, key)] = now + SNAPSHOT_SPACING * cost
                elif held:
                    held.pop((space.name, key), None)
                snaps.append(SnapshotRow(pids[key], lsn, blob, pickler, refs))
                tracker.clean(space, key)
        number = self.records + 1  # the record these rows go in (_record)
        if self._taken_stored:  # a live move's take (live_moves.py)
            new_rows.extend(self._stored_rows(number, snaps))
        for space, key in cold:
            if key in space.dirty:  # a guard: unsaved changes never leave memory
                continue
            space.evict(key, number)
            self._leaving.append((number, space, key))
            self.evictions += 1
        st = self.stats
        st.checkpoint_snapshots += checkpointed
        elapsed = time.perf_counter() - t0
        if elapsed > st.longest_snapshot_seconds:
            st.longest_snapshot_seconds = elapsed
        if snaps:
            st.snapshot_seconds.observe(elapsed)
        return new_rows, snaps

    def _new_partition(self, space: StateSpace, key, lsn: int) -> PartitionRow:
        blob = space.key_blobs.pop(key, None)
        if blob is None:
            blob = snapshots.dumps(key, f"partition key {key!r} of state {space.name!r}")[0]
        pid = self.next_pid
        self.next_pid += 1
        space.pids[key] = pid
        h = stable_hash(key)
        return PartitionRow(pid, space.name, blob, key_repr(key), lsn,
                            space.group_of(key, h), h)

    def _checkpoint_due(self, now: float) -> bool:
        """A partition that may be snapshotted now has been dirty for the
        checkpoint interval."""
        since = self.tracker.oldest_since(self._held_back(now) if self._held else None)
        return since is not None and now - since >= self.checkpoint_interval

    def _held_back(self, now: float):
        """Which partitions a periodic checkpoint leaves alone for now:
        those whose last snapshot cost much (``SLOW_SNAPSHOT``), until
        ``SNAPSHOT_SPACING`` times that has passed, so one big partition that
        changes all the time costs the loop at most about a tenth of its
        time (replay after a crash grows instead).  ``save_state=True``,
        the snapshots of downstream states and a forced checkpoint still
        take them."""
        held = self._held

        def is_held(item) -> bool:
            until = held.get((item[0].name, item[1]))
            return until is not None and now < until
        return is_held


def key_repr(key) -> str:
    r = repr(key)
    return r if len(r) <= 200 else r[:197] + "..."
