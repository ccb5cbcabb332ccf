"""Reading partitions one at a time (DESIGN.md §4, "State at scale"): a
worker finds a partition by its state and its key's stable hash when a
message needs it, checks what its snapshots refer to before it is ready,
and scrubs the rest in the background.  Part of ``SQLiteStore``."""

from __future__ import annotations

import sqlite3

from . import reading, schema, snapshots
from .errors import CorruptionError
from .records import PartitionRow


FINDER_CACHE_KIB = 16384  # the partition finder's page cache (SQLite's default: 2 MB)


class PartitionReads:
    """Mixed into ``SQLiteStore``: uses its ``_conn``, ``path``, ``_keys``
    (the key index) and ``_readers`` (connections of their own, closed
    with the store)."""

    def _reader(self) -> sqlite3.Connection:
        """A read connection of its own, closed with the store; use it from
        one thread at a time."""
        conn = sqlite3.connect(self.path, check_same_thread=False)
        self._readers.append(conn)
        return conn

    def class_sets(self) -> dict[int, tuple]:
        """Every set of class references a snapshot recorded, by id,
        checked against its checksum."""
        out: dict[int, tuple] = {}
        for cid, text, cs in self._conn.execute(
                "SELECT id, refs, checksum FROM snapshot_classes"):
            if schema.class_set_checksum(cid, text) != cs:
                raise reading.damaged(self.path, f"table snapshot_classes row {cid}")
            out[cid] = tuple(text.split("\n")) if text else ()
        return out

    def partition_using(self, class_set: int) -> PartitionRow | None:
        """A partition whose snapshot records ``class_set`` (None: none
        does any more)."""
        row = self._conn.execute(
            f"SELECT {reading.PARTITION_COLUMNS} {reading.PARTITIONS_FROM} "
            f"WHERE s.classes=? LIMIT 1", (class_set,)).fetchone()
        return None if row is None else reading.partition_row(self.path, row)

    def partition_states(self) -> list[str]:
        """The states that have partitions here (read from the key index,
        one step per state, not one per partition; with those not merged
        into it yet and those of earlier releases not hashed yet)."""
        out: list[str] = []
        while True:
            (state,) = self._conn.execute(
                "SELECT min(state) FROM partition_keys WHERE state > ?",
                (out[-1] if out else "",)).fetchone()
            if state is None:
                break
            out.append(state)
        unhashed = {s for (s,) in self._conn.execute(
            "SELECT DISTINCT state FROM partitions WHERE key_hash IS NULL")}
        return sorted(set(out) | self._keys.states() | unhashed)

    def hash_partitions(self, state: str, key_hash) -> int:
        """Give partitions written before key hashes were stored (schema
        4 and earlier) their key's hash, ``key_hash(PartitionRow)``, and
        a checksum that covers it; once per database.  Returns how many."""
        def fill(conn, prow):
            prow.key_hash = key_hash(prow)
            conn.execute("UPDATE partitions SET key_hash=?, checksum=? "
                         "WHERE pid=?", (prow.key_hash, prow.checksum(), prow.pid))
            # below the key index's watermark (set past every partition
            # when the index was made): its entry goes in the table
            conn.execute("INSERT OR IGNORE INTO partition_keys VALUES (?,?,?)",
                         (state, prow.key_hash, prow.pid))
        return self._rewrite_partitions("p.state=? AND p.key_hash IS NULL",
                                        (state,), fill)

    def _rewrite_partitions(self, where: str, args: tuple, fill,
                            done: str | None = None) -> int:
        """Every partition ``where`` says, read and checked, then
        ``fill(conn, PartitionRow)``, in one transaction (with ``done``, a
        statement that remembers the pass); how many there were."""
        conn = self._conn
        rows = conn.execute(f"SELECT {reading.PARTITION_COLUMNS} "
                            f"{reading.PARTITIONS_FROM} WHERE {where}", args).fetchall()
        if not rows and done is None:
            return 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for cols in rows:
                fill(conn, reading.partition_row(self.path, cols))
            if done is not None:
                conn.execute(done)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(rows)

    def group_partitions(self, group_of) -> int:
        """Give partitions written before key groups were stored (schema 3
        and earlier: ``key_group`` -1) their group, ``group_of(PartitionRow)``,
        so they can move with it (``moves.py``); one pass per database,
        remembered in ``meta``.  Returns how many."""
        if self._conn.execute(
                "SELECT 1 FROM meta WHERE key='key_groups_filled'").fetchone():
            return 0

        def fill(conn, prow):
            prow.key_group = group_of(prow)
            conn.execute("UPDATE partitions SET key_group=?, checksum=? WHERE pid=?",
                         (prow.key_group, prow.checksum(), prow.pid))
        return self._rewrite_partitions(
            "p.key_group < 0", (), fill,
            done="INSERT INTO meta VALUES ('key_groups_filled', '1')")

    def partition_finder(self):
        """A function ``(state, key_hash) -> [(PartitionRow, load)]``: the
        partitions of ``state`` whose key hashes so, each with a function
        that reads and checks its snapshot (None: it has none yet).  It
        reads on a connection of its own, so call it from one thread at a
        time while commits go on in another; it sees what they committed."""
        path = self.path
        conn = self._reader()
        conn.execute(f"PRAGMA cache_size=-{FINDER_CACHE_KIB}")
        select = f"SELECT {reading.PARTITION_COLUMNS} {reading.PARTITIONS_FROM} "
        indexed = select + ("JOIN partition_keys k ON k.pid = p.pid "
                            "WHERE k.state=? AND k.key_hash=?")
        by_pid = select + "WHERE p.pid=?"
        keys = self._keys

        def find(state: str, key_hash: int):
            # the partitions not merged yet first: one a merge moves into
            # the table meanwhile is then found there (key_index.py)
            recent = keys.pids(state, key_hash)
            try:
                rows = conn.execute(indexed, (state, key_hash)).fetchall()
                seen = {cols[0] for cols in rows}
                for pid in recent:
                    if pid in seen:
                        continue
                    cols = conn.execute(by_pid, (pid,)).fetchone()
                    if cols is None:
                        raise CorruptionError(
                            f"{path}: partition {pid} (state {state!r}) was "
                            f"committed but its row is gone; refusing to run "
                            f"on damaged state")
                    rows.append(cols)
            except sqlite3.DatabaseError as e:
                raise CorruptionError(f"{path}: cannot read partitions of state "
                                      f"{state!r}: {e}") from e
            return [(reading.partition_row(path, cols),
                     lambda prow, cols=cols: reading.snapshot_row(conn, path, prow,
                                                                  cols))
                    for cols in rows]
        return find

    def scrubber(self):
        """A function ``(after_pid, limit) -> (last_pid, checked)`` that
        reads up to ``limit`` partitions after ``after_pid`` and checks
        their keys and snapshots (raising CorruptionError naming the first
        damaged one); ``last_pid`` is None when there are no more.  The
        last step (fewer than ``limit`` rows) also looks for snapshots that
        belong to no partition (a damaged pid).  Its own connection, like
        ``partition_finder``."""
        path = self.path
        conn = self._reader()

        def step(after: int, limit: int):
            rows = conn.execute(
                f"SELECT {reading.PARTITION_COLUMNS} {reading.PARTITIONS_FROM} "
                f"WHERE p.pid > ? ORDER BY p.pid LIMIT ?", (after, limit)).fetchall()
            for cols in rows:
                reading.snapshot_row(conn, path, reading.partition_row(path, cols),
                                     cols)
            if len(rows) < limit:  # the last step: snapshots of no partition
                reading.check_orphans(conn, path)
            return (rows[-1][0] if rows else None), len(rows)
        return step

    def all_partitions(self):
        """Every partition and snapshot, read and checked at once (tests
        and tools)."""
        return reading.all_partitions(self._conn, self.path)

    def stored_in_groups(self, state: str, groups, skip=frozenset()) -> list:
        """(PartitionRow, key, SnapshotRow or None) of the stored partitions
        of ``state`` in key groups ``groups``, each checked, but those whose
        pid is in ``skip`` (the caller holds them in memory: neither their
        keys nor their snapshots are read): a live move hands them over as
        the bytes they are stored as, without loading them
        (runtime/live_moves.py).  A snapshot's ``classes`` are the class
        references it recorded.  One read transaction: a commit under way
        meanwhile is seen whole or not at all."""
        marks = ",".join("?" * len(groups))
        # a connection of its own: commits may be under way on the store's
        conn = self._reader()
        out = []
        try:
            conn.execute("BEGIN")
            sets = {cid: tuple(text.split("\n")) if text else ()
                    for cid, text in conn.execute(
                        "SELECT id, refs FROM snapshot_classes")}
            pids = [pid for (pid,) in conn.execute(
                f"SELECT pid FROM partitions WHERE state=? AND key_group IN "
                f"({marks}) ORDER BY pid", (state, *groups)) if pid not in skip]
            by_pid = (f"SELECT {reading.PARTITION_COLUMNS} {reading.PARTITIONS_FROM} "
                      f"WHERE p.pid=?")
            for pid in pids:
                cols = conn.execute(by_pid, (pid,)).fetchone()
                prow = reading.partition_row(self.path, cols)  # checksum checked
                snap = reading.snapshot_row(conn, self.path, prow, cols)
                if snap is not None:
                    snap.classes = sets.get(cols[-1], ())
                try:
                    key = snapshots.loads(prow.key)
                except Exception as e:
                    raise CorruptionError(
                        f"{self.path}: cannot load the key of partition "
                        f"{prow.pid} (state {state!r}): {type(e).__name__}: "
                        f"{e}") from e
                out.append((prow, key, snap))
            conn.execute("COMMIT")
        finally:
            conn.close()
            self._readers.remove(conn)
        return out

    def keys_of(self, state: str):
        """The keys of every stored partition of ``state`` (its window
        partitions are all loaded at start: runtime/windowing.py)."""
        rows = self._conn.execute(
            f"SELECT {reading.PARTITION_COLUMNS} {reading.PARTITIONS_FROM} "
            f"WHERE p.state=? ORDER BY p.pid", (state,)).fetchall()
        for cols in rows:
            prow = reading.partition_row(self.path, cols)  # its checksum checked
            try:
                yield snapshots.loads(prow.key)
            except Exception as e:
                raise CorruptionError(
                    f"{self.path}: cannot load the key of partition {prow.pid} "
                    f"(state {state!r}): {type(e).__name__}: {e}") from e
