"""The key index: how a partition not in memory is found by its state and
its key's stable hash, without a random B-tree insert per new key.

An index on ``partitions (state, key_hash)`` put every new partition at a
random place in a B-tree: once the tree outgrows the page cache, each new
key dirtied a page of its own (a 4 KiB WAL frame), so a batch creating
10,000 partitions wrote about 20 MB of WAL in its commit (180-200 ms at
1,000,000 keys, the same with checkpoints off) and creating keys ran 7x
slower with resilience than without.

So the index is kept like a small log-structured merge tree.  Table
``partition_keys (state, key_hash, pid)`` (schema 6; clustered on that
key) holds every partition whose pid is below the watermark kept in
``meta`` (``keys_indexed_below``, checksummed); partitions at or above it
are in memory, in ``recent`` ((state, key_hash) -> pids), built at open
from a pid-range scan of ``partitions`` and added to after each commit.
Waiting partitions are kept in ``BUCKETS`` buckets by the top bits of
their key hash (the hash is 32 bits: ``placement.stable_hash``).  Once
``EPOCH`` wait (or any, after a commit that took no input: the worker is
checkpointing or idle), they are merged into the table, one bucket per
step, each step a transaction of its own after a commit: a bucket's
entries, sorted, fall in one sixteenth of the tree, so a merge dirties
each leaf page about once, not once per key, and no step sorts more than
one bucket.  The partitions created while a merge runs wait for the next
one, so an epoch is at most the partitions of ``BUCKETS`` commits more
than ``EPOCH``.  The last step moves the watermark in the same
transaction.  A bucket's entries leave ``recent`` once its step has
committed.  A crash mid-merge leaves the watermark where it was: the next
start finds those partitions in its scan, and the merge is redone
(``INSERT OR IGNORE``).

A lookup reads ``recent`` first, then the table, so an entry that a merge
moves in between is found in one or the other.  ``recent`` is changed only
by the committing thread and read by the finder's (single dict and list
operations, atomic under the GIL).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Iterable

from . import bulk
from .errors import CorruptionError
from .records import control_checksum

EPOCH = 65536  # partitions waiting that start a merge (a bounded scan at open)
BUCKETS = 16  # merge steps per epoch, each one range of key hashes
HASH_BITS = 32
META_KEY = "keys_indexed_below"


def watermark_text(below: int) -> str:
    return json.dumps({"below": below,
                       "checksum": control_checksum(META_KEY, below)})


def read_watermark(conn: sqlite3.Connection, path: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (META_KEY,)).fetchone()
    if row is None:
        return 0
    try:
        body = json.loads(row[0])
        below = int(body["below"])
        if control_checksum(META_KEY, below) != body["checksum"]:
            raise ValueError("checksum")
    except (ValueError, KeyError, TypeError):
        raise CorruptionError(f"{path}: the key index's watermark in table meta "
                              f"failed its checksum; refusing to run on damaged "
                              f"state") from None
    return below


class KeyIndex:
    def __init__(self, conn: sqlite3.Connection, path: str):
        self.path = path
        self.below = read_watermark(conn, path)
        self.recent: dict[tuple[str, int], list[int]] = {}
        self._waiting = self._buckets()  # (state, hash, pid) by hash range
        self.waiting = 0  # entries in _waiting
        self._next_pid = self.below  # past every partition seen
        self._merge: list[list[tuple[str, int, int]]] | None = None  # under way
        self._merge_at = 0  # the next bucket to merge
        self._merge_below = 0
        self.merges = 0  # merges finished
        for pid, state, key_hash in conn.execute(
                "SELECT pid, state, key_hash FROM partitions WHERE pid >= ? "
                "AND key_hash IS NOT NULL ORDER BY pid", (self.below,)):
            self._add(state, key_hash, pid)

    @staticmethod
    def _buckets() -> list[list[tuple[str, int, int]]]:
        return [[] for _ in range(BUCKETS)]

    def _add(self, state: str, key_hash: int, pid: int) -> None:
        self.recent.setdefault((state, key_hash), []).append(pid)
        bucket = (key_hash * BUCKETS) >> HASH_BITS
        self._waiting[min(BUCKETS - 1, max(0, bucket))].append((state, key_hash, pid))
        self.waiting += 1
        if pid >= self._next_pid:
            self._next_pid = pid + 1

    def committed(self, rows: Iterable) -> None:
        """Partition rows of a commit that has landed (before the store
        says so: a partition evicted in it is looked up right after)."""
        for p in rows:
            if p.key_hash is not None:
                self._add(p.state, p.key_hash, p.pid)

    def forget(self, pids) -> None:
        """Partitions a commit deleted (a live move handed them over): not
        looked for, nor merged, any more."""
        gone = set(pids)
        for k, lst in list(self.recent.items()):
            kept = [p for p in lst if p not in gone]
            if len(kept) != len(lst):
                if kept:
                    self.recent[k] = kept
                else:
                    del self.recent[k]
        for bucket in self._waiting:
            if any(pid in gone for _, _, pid in bucket):
                before = len(bucket)
                bucket[:] = [e for e in bucket if e[2] not in gone]
                self.waiting -= before - len(bucket)
        for bucket in self._merge or ():  # a merge under way
            bucket[:] = [e for e in bucket if e[2] not in gone]

    def pids(self, state: str, key_hash: int) -> list[int]:
        """Partitions not in the table yet that may hold this key."""
        return list(self.recent.get((state, key_hash), ()))

    def states(self) -> set[str]:
        return {state for state, _ in list(self.recent)}

    def due(self, quiet: bool) -> bool:
        """A merge step is due: one is under way, or EPOCH partitions wait,
        or (``quiet``: the commit took no input) any do, so a worker whose
        input has stopped leaves none for the next start to scan."""
        return self._merge is not None or self.waiting >= EPOCH or (
            quiet and self.waiting > 0)

    def step(self, conn: sqlite3.Connection, quiet: bool = False) -> bool:
        """One merge step (a bucket), in a transaction of its own (the
        committing thread, after a commit); False when none is due."""
        if self._merge is None:
            if not self.due(quiet):
                return False
            self._merge, self._waiting, self.waiting = self._waiting, self._buckets(), 0
            self._merge_below = self._next_pid
            self._merge_at = 0
        chunk = sorted(self._merge[self._merge_at])
        last = self._merge_at == BUCKETS - 1
        conn.execute("BEGIN")
        try:
            bulk.insert(conn, "INSERT OR IGNORE INTO partition_keys VALUES", chunk)
            if last:
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             (META_KEY, watermark_text(self._merge_below)))
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        # in the table now (committed): memory lets go of them, one bucket
        # at a time (the next start finds them past the watermark again
        # until the last step moves it, and merges them once more)
        recent = self.recent
        for state, key_hash, pid in chunk:
            pids = recent[(state, key_hash)]
            pids.remove(pid)
            if not pids:
                del recent[(state, key_hash)]
        self._merge[self._merge_at] = []
        self._merge_at += 1
        if last:
            self.below = self._merge_below
            self._merge = None
            self.merges += 1
        return True
