"""The durable store: one SQLite database per worker, WAL journal mode.

``<dir>/<worker>.db`` (0600 in a 0700 directory), locked by the process that
runs on it, with a manifest and a position file beside it (``files.py``).
One transaction per batch: its input rows, output rows, new partitions,
snapshots, stream counts and delivery positions, and the ``replay_from``
that recovery starts at.  Input-log rows below ``replay_from`` and outbox
rows below each sink's delivery position are deleted in the same
transaction, so the files stay the size of the backlog.

Every value recovery trusts carries a checksum (``reading.py`` checks them);
a database that is missing, emptied, truncated or behind the last committed
position is refused before anything is served from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import time
from typing import Iterator

from . import bulk, checked_meta, reading, schema, sink_identities, vacuum
from .key_index import KeyIndex
from .checkpointer import JOURNAL_SIZE_LIMIT, Checkpointer
from .partition_reads import PartitionReads
from .errors import CorruptionError, IncompatibleDirectory, StoreError
from .files import (MANIFEST_SUFFIX, DatabaseLock, Position, PositionFile,
                    check_database_file, check_position, new_manifest,
                    read_manifest, trial_write, worker_names, write_manifest)
from .records import (CommitRecord, InputRow, OutputRow, PendingRow,
                      Recovered, control_checksum, sinks_checksum)

log = logging.getLogger("wallaroo")

SYNCHRONOUS = ("NORMAL", "FULL")
# Snapshots larger than this are split over rows of ``snapshot_parts``, so a
# state of any size stays under SQLite's blob limit (1e9 bytes by default).
# The environment variable lowers it for tests of the split.
PART_BYTES = int(os.environ.get("WALLAROO_SNAPSHOT_PART_BYTES", 64 * 1024 * 1024))
# The position file records the database's size after each commit
# (files.py: a file found smaller at the next start was truncated).  Taking
# it (a stat, and ``PRAGMA page_count`` when the database vacuums) was a
# fifth of a small commit's time, so a commit reuses the size taken at
# most this many seconds before: the file and its pages only grow between
# two vacuum steps, each of which takes it afresh, so the size recorded
# is never more than the file's (a truncation of only the last moment's
# growth is left to the commit and lsn checks).
SIZE_EVERY = 0.1


def db_path(directory: str, worker: str) -> str:
    return os.path.join(directory, f"{worker}.db")


class SQLiteStore(PartitionReads):
    durable = True
    starts = 0  # times the database was opened (known once open)
    landed = 0  # the number of the last CommitRecord committed
    vacuum_steps = 0  # incremental vacuum steps run (vacuum.py)
    vacuum_pending = False  # free pages remain to give back

    def __init__(self, directory: str, worker: str, synchronous: str = "NORMAL",
                 part_bytes: int | None = None):
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, "
                             f"got {synchronous!r}")
        self.directory = directory
        self.worker = worker
        self.synchronous = synchronous
        self.path = db_path(directory, worker)
        self.part_bytes = part_bytes or PART_BYTES
        self._lock = DatabaseLock(self.path)
        self._position = PositionFile(self.path)
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        self._commits = 0
        self._replay_from = 0
        self._delivered: dict[int, int] = {}
        self._next_seq: dict[int, int] = {}
        self._bases: dict[int, int] = {}
        self._pending_counts: dict[int, int] = {}
        self._sink_ids: list[int] = []  # the application's sink i -> store id
        self._identities: set = set()  # every destination identity it numbered
        self._sink_index: dict[int, int] = {}  # store id -> application's i
        self._parted: set[int] = set()  # pids whose snapshot has extra parts
        self._class_ids: dict[tuple, int] = {}  # class references -> set id
        self._new_class_ids: dict[tuple, int] = {}  # in the commit under way
        self._last_next_lsn = 0
        self._size, self._size_due = 0, 0.0  # the last size taken (SIZE_EVERY)
        self._vacuums = False  # the database vacuums incrementally
        self._page_bytes = 4096  # its page size (read at open)
        self._keys: KeyIndex | None = None  # the key index (key_index.py)
        self._merges = True  # merge steps run (until one fails)
        self.notes: list[str] = []  # warnings for the worker's log
        self._readers: list[sqlite3.Connection] = []  # finders, scrubbers

    # -- opening ---------------------------------------------------------
    def open(self, fingerprint: dict, membership: dict | None = None) -> Recovered:
        """Open (or create) the database and return what it holds.
        ``membership``: the cluster this worker belongs to (members, key
        groups); saved when the database has none, returned as saved
        otherwise (``Recovered.membership``) for the caller to check."""
        _make_directory(self.directory)
        try:
            return self._open(fingerprint, membership)
        except BaseException:
            self.close(update_position=False)
            raise

    def _open(self, fingerprint: dict, membership: dict | None = None) -> Recovered:
        manifest = read_manifest(self.path)
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        check_database_file(self.path, manifest)
        if manifest is None and not existed:
            self._note_other_workers(membership)
        self._lock.acquire()
        trial_write(self.path)
        db_size = self._lock.size()
        position = self._position.read()
        if existed:
            commits, next_lsn = _progress_read_only(self.path)
            check_position(self.path, position, manifest, db_size, commits, next_lsn)
        elif position is not None and position.commits > 0:
            check_position(self.path, position, manifest, db_size, 0, 0)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None,
                                   check_same_thread=False)
            self._conn = conn
            if not existed:  # only a new database takes it (vacuum.py)
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("PRAGMA cache_size=-65536")
            # the WAL keeps its high-water mark unless told otherwise: after
            # a burst it is truncated back to this when it restarts
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            schema.migrate(conn, self.path)
            self._vacuums = vacuum.enabled(conn)
            self._page_bytes = vacuum.page_size(conn)
            # WAL checkpoints run in a thread of their own (checkpointer.py)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = Checkpointer(self.path)
            old_fp = self._check_fingerprint(fingerprint)
            self._check_identity(manifest, fingerprint)
            self._sink_ids = sink_identities.map_sinks(conn, self.path, old_fp,
                                                       fingerprint)
            self._sink_index = {sid: i for i, sid in enumerate(self._sink_ids)}
            self._identities = set(sink_identities.read(conn, self.path).values())
            saved = self._settle_membership(membership)
            self.starts = self._count_start()
            rec, self._parted = reading.load(conn, self.path)
            self._keys = KeyIndex(conn, self.path)
            self._class_ids = {refs: cid for cid, refs in self.class_sets().items()}
            rec.membership = saved
            rec.live_moves = checked_meta.read_checked(
                conn, self.path, checked_meta.LIVE_MOVES, "the state of live moves")
            rec.retired = conn.execute(
                "SELECT 1 FROM meta WHERE key='retired'").fetchone() is not None
            rec.next_out_seq = self._by_app(rec.next_out_seq)
            rec.delivered = self._by_app(rec.delivered)
            rec.sink_bases = self._by_app(rec.sink_bases)
            rec.unsplittable = self._by_app(dict(conn.execute(
                "SELECT sink, sum(count) FROM outbox WHERE framed = 0 AND "
                "count > 1 GROUP BY sink")))
        except sqlite3.DatabaseError as e:
            raise CorruptionError(f"{self.path}: cannot read the resilience "
                                  f"database: {e}") from e
        self._commits = rec.commits
        self._replay_from = rec.replay_from
        self._delivered = dict(rec.delivered)
        self._bases = dict(rec.sink_bases)
        self._next_seq = dict(rec.next_out_seq)
        self._pending_counts = {p.id: p.count for p in rec.pending}
        self._position.open()
        self._write_position(rec.next_lsn)
        return rec

    def _note_other_workers(self, membership: dict | None) -> None:
        siblings = set((membership or {}).get("members", ()))
        others = [n for n in worker_names(self.directory) if n not in siblings]
        if others:
            self.notes.append(
                f"{self.directory} holds no database for worker {self.worker!r} "
                f"but holds worker(s) {', '.join(map(repr, others))}: starting "
                f"{self.worker!r} fresh.  Was --name mistyped?")

    def _settle_membership(self, proposed: dict | None) -> dict | None:
        conn = self._conn
        saved = checked_meta.read_checked(conn, self.path, "membership",
                                          "the membership")
        if saved is not None or proposed is None:
            return saved
        body = dict(proposed)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO meta VALUES ('membership', ?)",
                     (checked_meta.checked_text("membership", body),))
        conn.execute("COMMIT")
        return body

    def _by_app(self, by_id: dict[int, int]) -> dict[int, int]:
        index = self._sink_index
        return {index[sid]: v for sid, v in by_id.items() if sid in index}

    def _check_fingerprint(self, fp: dict) -> dict | None:
        """Refuses another application's directory; returns the
        fingerprint the directory had (None when new)."""
        conn = self._conn
        row = conn.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if row is None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("fingerprint", json.dumps(fp, sort_keys=True)),
                ("worker", self.worker),
                ("created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            ])
            conn.execute("COMMIT")
            return None
        old = json.loads(row[0])
        problems = fingerprint_problems(old, fp)
        if problems:
            raise IncompatibleDirectory(
                f"{self.path} holds state this application cannot use:\n  - "
                + "\n  - ".join(problems)
                + "\nStarting on it would mix states or silently start empty. "
                  "Use another --resilience-dir (or --name), or remove this "
                  "worker's files if the old state is no longer wanted.")
        if old != fp:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE meta SET value=? WHERE key='fingerprint'",
                         (json.dumps(fp, sort_keys=True),))
            conn.execute("COMMIT")
        return old

    def _check_identity(self, manifest, fp: dict) -> None:
        """The database is the one this directory's manifest was written
        for; a database without a manifest (new, or made before manifests
        existed) gets one."""
        conn = self._conn
        row = conn.execute("SELECT value FROM meta WHERE key='database_id'").fetchone()
        (commits,) = conn.execute("SELECT commits FROM progress").fetchone()
        if manifest is not None:
            if row is None and commits == 0:
                # killed between creating the database and its first commit
                self._set_database_id(manifest.database_id)
                return
            if row is None or row[0] != manifest.database_id:
                raise IncompatibleDirectory(
                    f"{self.path} is not the database this directory was "
                    f"created with ({self.path + MANIFEST_SUFFIX} names database "
                    f"{manifest.database_id}, the file holds "
                    f"{row[0] if row else 'none'}): a database copied from "
                    f"elsewhere would serve another worker's state")
            return
        m = new_manifest(self.worker, fp.get("application", "?"))
        if row is not None:  # the manifest was lost: the database says who it is
            m = type(m)(self.worker, row[0], m.created_at, m.application)
        else:
            self._set_database_id(m.database_id)
        write_manifest(self.path, m)

    def _count_start(self) -> int:
        """How many times a worker has opened this database, this time
        included (``meta`` key ``starts``; databases from before it was
        kept count from their first start since)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT value FROM meta WHERE key='starts'").fetchone()
        n = int(row[0]) + 1 if row is not None and row[0].isdigit() else 1
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('starts', ?)", (str(n),))
        conn.execute("COMMIT")
        return n

    def _set_database_id(self, database_id: str) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('database_id', ?)",
                           (database_id,))
        self._conn.execute("COMMIT")

    # -- reading the backlog --------------------------------------------
    def replay_inputs(self, from_lsn: int) -> Iterator[InputRow]:
        try:
            yield from reading.input_rows(self._conn, self.path, from_lsn)
        except sqlite3.DatabaseError as e:
            raise CorruptionError(f"{self.path}: cannot read the input log: "
                                  f"{e}") from e

    def undelivered_outputs(self, delivered: dict[int, int]) -> Iterator[OutputRow]:
        ids, index = self._sink_ids, self._sink_index
        by_id = {ids[i]: d for i, d in delivered.items() if i < len(ids)}
        try:
            for row in reading.output_rows(self._conn, self.path, by_id):
                i = index.get(row.sink)
                if i is not None:  # (others were refused when opening)
                    row.sink = i
                    yield row
        except sqlite3.DatabaseError as e:
            raise CorruptionError(f"{self.path}: cannot read the outbox: {e}") from e

    def output_reader(self):
        """A function ``(sink, from_seq, max_bytes) -> [OutputRow]`` reading
        undelivered outputs back (a sink whose outputs did not fit in
        memory), on a connection of its own: call it from one thread at a
        time, while commits go on in another.  It sees destinations added
        since it was made (a member that joined: ``_add_destinations``),
        as those lists are only ever appended to."""
        path, ids, index = self.path, self._sink_ids, self._sink_index
        conn: list[sqlite3.Connection] = []

        def read(sink: int, from_seq: int, max_bytes: int) -> list[OutputRow]:
            if not conn:
                conn.append(sqlite3.connect(path, check_same_thread=False))
            rows, size = [], 0
            for row in reading.output_rows(conn[0], path, {ids[sink]: from_seq},
                                           sink=ids[sink]):
                row.sink = index[row.sink]
                rows.append(row)
                size += len(row.data)
                if size >= max_bytes:
                    break
            return rows
        return read

    # -- committing ------------------------------------------------------
    def commit(self, rec: CommitRecord) -> None:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self.path}: commit on a closed store")
        cp = self._checkpointer
        # every write of the committing connection (the transaction, then a
        # merge or vacuum step, or a restart of the WAL) and the checkpoint
        # thread's RESTART take turns on this lock (checkpointer.py, "The
        # gate")
        with (cp.gate if cp is not None else contextlib.nullcontext()):
            self._commit(conn, rec, cp)

    def _commit(self, conn: sqlite3.Connection, rec: CommitRecord,
                cp: Checkpointer | None) -> None:
        rf = rec.replay_from
        commits = self._commits + 1
        conn.execute("BEGIN")
        added: list[int] = []
        try:
            if rec.new_destinations:
                added = self._add_destinations(conn, rec)
            elif rec.dropped_destinations and rec.fingerprint is not None:
                conn.execute("UPDATE meta SET value=? WHERE key='fingerprint'",
                             (json.dumps(rec.fingerprint, sort_keys=True),))
            self._write_rows(conn, rec, rf)
            self._write_control(conn, rec, rf, commits)
            conn.execute("COMMIT")
        except BaseException:
            for sid in added:
                self._sink_index.pop(sid, None)
            del self._sink_ids[len(self._sink_ids) - len(added):]
            self._new_class_ids.clear()
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        if self._new_class_ids:
            self._class_ids.update(self._new_class_ids)
            self._new_class_ids.clear()
        self._commits = commits
        if rec.partitions:  # findable before the commit is said to have landed
            self._keys.committed(rec.partitions)
        if rec.deleted:
            self._keys.forget(rec.deleted)
            self._parted.difference_update(rec.deleted)
        if rec.number > self.landed:
            self.landed = rec.number
        if cp is not None:
            cp.commits = commits
            if cp.wal_too_big():  # checkpoints fell behind (a stat per commit)
                cp.restart(conn)
        if rec.pending is not None:
            self._pending_counts = {p.id: p.count for p in rec.pending}
        for pid, consumed in rec.pending_consumed.items():
            if consumed >= self._pending_counts.get(pid, 0):
                self._pending_counts.pop(pid, None)
        self._replay_from = max(self._replay_from, rf)
        self._next_seq.update(rec.next_out_seq)
        self._bases.update(rec.sink_bases)
        for s, d in rec.delivered.items():
            if d > self._delivered.get(s, 0):
                self._delivered[s] = d
        if rec.dropped_destinations:  # after their last positions, written
            self._drop_destinations(rec.dropped_destinations)
        self._write_position(rec.next_lsn, fresh=False)
        quiet = not rec.inputs
        if self._merges and self._keys.due(quiet):
            self._merge_step(quiet)
        if self._vacuums and cp is not None:
            idle = not (rec.inputs or rec.outputs or rec.partitions or rec.snapshots)
            self._vacuum_step(cp, rec.next_lsn, vacuum.IDLE_STEP_PAGES if idle
                              else vacuum.STEP_PAGES)

    def had_destination(self, identity) -> bool:
        """Whether this database numbered a destination of ``identity``
        before (its positions are kept under that id)."""
        return tuple(identity) in self._identities

    def _drop_destinations(self, count: int) -> None:
        """The last ``count`` destinations are gone (members that left;
        their rows were all delivered): a destination added later takes
        their place, under an id of its own."""
        first = len(self._sink_ids) - count
        for i in range(first, len(self._sink_ids)):
            self._sink_index.pop(self._sink_ids[i], None)
            for known in (self._next_seq, self._delivered, self._bases):
                known.pop(i, None)
        del self._sink_ids[first:]

    def _add_destinations(self, conn: sqlite3.Connection, rec: CommitRecord) -> list[int]:
        """The ids of the destinations this commit adds (a new member's
        channel), usable by its own rows; the fingerprint saved with them,
        so the next open finds them under the same ids."""
        ids = sink_identities.add(conn, self.path, rec.new_destinations)
        self._identities.update(tuple(i) for i in rec.new_destinations)
        for sid in ids:
            self._sink_index[sid] = len(self._sink_ids)
            self._sink_ids.append(sid)
        if rec.fingerprint is not None:
            conn.execute("UPDATE meta SET value=? WHERE key='fingerprint'",
                         (json.dumps(rec.fingerprint, sort_keys=True),))
        return ids

    def _merge_step(self, quiet: bool) -> None:
        """One step of merging new partitions into the key index
        (key_index.py), after a commit."""
        try:
            self._keys.step(self._conn, quiet)
        except sqlite3.Error as e:
            # the batch is committed; the partitions are found through
            # memory meanwhile, and the next start merges them
            self._merges = False
            log.warning("%s: merging new partitions into the key index failed, "
                        "and is put off until the next start: %s", self.path, e)

    def _vacuum_step(self, cp: Checkpointer, next_lsn: int, most: int) -> None:
        """Give back a few free pages when many are free (vacuum.py); the
        checkpointer's lock is held until the position file records the
        smaller size, and a busy checkpointer puts the step off."""
        conn = self._conn
        excess = vacuum.excess_pages(conn)
        self.vacuum_pending = excess > 0
        if not excess or not cp.lock.acquire(blocking=False):
            return
        try:
            vacuum.step(conn, min(excess, most))
            self.vacuum_steps += 1
            self.vacuum_pending = excess > most
            self._write_position(next_lsn)
        except sqlite3.Error as e:
            # the batch is committed; giving pages back is not needed for it
            self._vacuums = self.vacuum_pending = False
            log.warning("%s: incremental vacuum failed, and is off until the "
                        "next start: %s", self.path, e)
        finally:
            cp.lock.release()

    def _write_rows(self, conn: sqlite3.Connection, rec: CommitRecord, rf: int) -> None:
        inputs = [r for r in rec.inputs if r.end_lsn > rf]
        if inputs:
            bulk.insert(conn, "INSERT INTO input_log VALUES", [
                (r.first_lsn, r.count, r.source, r.stream, r.first_seq,
                 ",".join(map(str, r.failed)), len(r.frames), r.checksum(),
                 r.frames, r.connector, r.ingest_ns) for r in inputs])
        if rec.outputs:
            rows = []
            for o in rec.outputs:
                o = dataclasses.replace(o, sink=self._sink_ids[o.sink])
                rows.append((o.sink, o.first_seq, o.count, len(o.data),
                             o.checksum(), o.data, int(o.framed)))
            bulk.insert(conn, "INSERT INTO outbox VALUES", rows)
        if rec.partitions:
            bulk.insert(
                conn, "INSERT INTO partitions (pid, state, key_repr, created_lsn, "
                "checksum, key, key_group, key_hash) VALUES", [
                    (p.pid, p.state, p.key_repr, p.created_lsn, p.checksum(),
                     p.key, p.key_group, p.key_hash) for p in rec.partitions])
        if rec.snapshots:
            self._write_snapshots(conn, rec)
        if rec.pending is not None:
            conn.execute("DELETE FROM pending_input")
            bulk.insert(conn, "INSERT INTO pending_input VALUES", [
                (p.id, p.source, p.stream, p.first_seq, p.count, p.consumed,
                 len(p.frames), p.checksum(), p.consumed_checksum(), p.frames)
                for p in rec.pending])
        counts = self._pending_counts if rec.pending is None else {
            p.id: p.count for p in rec.pending}
        for pid, consumed in rec.pending_consumed.items():
            count = counts.get(pid)
            if count is None:
                raise StoreError(f"{self.path}: pending input row {pid} is unknown")
            if consumed >= count:
                conn.execute("DELETE FROM pending_input WHERE id=?", (pid,))
            else:
                conn.execute(
                    "UPDATE pending_input SET consumed=?, consumed_checksum=? "
                    "WHERE id=?", (consumed, PendingRow(
                        pid, "", None, None, count, b"", consumed).consumed_checksum(),
                        pid))

    def _write_snapshots(self, conn: sqlite3.Connection, rec: CommitRecord) -> None:
        rows, split = [], []
        for s in rec.snapshots:
            blob = s.blob
            if s.pid in self._parted:
                conn.execute("DELETE FROM snapshot_parts WHERE pid=?", (s.pid,))
                self._parted.discard(s.pid)
            cid = self._class_id(conn, s.classes)
            pieces = snapshot_pieces(conn, blob, self.part_bytes)
            if len(pieces) == 1:
                rows.append((s.pid, s.lsn, len(blob), s.pickler, s.checksum(),
                             blob, 0, cid))
                continue
            rows.append((s.pid, s.lsn, len(blob), s.pickler, s.checksum(),
                         pieces[0], len(pieces) - 1, cid))
            split.extend((s.pid, i, p) for i, p in enumerate(pieces[1:], 1))
            self._parted.add(s.pid)
        bulk.insert(conn, "INSERT OR REPLACE INTO snapshots (pid, lsn, size, "
                    "pickler, checksum, state, parts, classes) VALUES", rows)
        bulk.insert(conn, "INSERT INTO snapshot_parts VALUES", split)

    def _class_id(self, conn: sqlite3.Connection, refs: tuple) -> int:
        """The id of a set of class references, added in this commit when
        it is new (a worker meets few: one per shape of state)."""
        cid = self._class_ids.get(refs) or self._new_class_ids.get(refs)
        if cid is None:
            cid = 1 + max(max(self._class_ids.values(), default=0),
                          max(self._new_class_ids.values(), default=0))
            text = schema.class_set_text(refs)
            conn.execute("INSERT INTO snapshot_classes VALUES (?,?,?)",
                         (cid, text, schema.class_set_checksum(cid, text)))
            self._new_class_ids[refs] = cid
        return cid

    def _write_control(self, conn: sqlite3.Connection, rec: CommitRecord, rf: int,
                       commits: int) -> None:
        if rec.streams:
            now = int(time.time())
            bulk.insert(
                conn, "INSERT INTO streams VALUES",
                [(src, st, n, now, control_checksum("streams", src, st, n, now))
                 for (src, st), n in rec.streams.items()],
                tail="ON CONFLICT(source, stream) DO UPDATE SET "
                "count=excluded.count, last_seen=excluded.last_seen, "
                "checksum=excluded.checksum")
        if rec.forget_streams:
            conn.executemany("DELETE FROM streams WHERE source=? AND stream=?",
                             rec.forget_streams)
        sinks = set(rec.next_out_seq) | set(rec.delivered) | set(rec.sink_bases)
        if sinks:
            next_seq = {**self._next_seq, **rec.next_out_seq}
            delivered = {**self._delivered, **rec.delivered}
            bases = {**self._bases, **rec.sink_bases}
            rows = []
            for s in sinks:
                n, d, sid = next_seq.get(s, 0), delivered.get(s, 0), self._sink_ids[s]
                b = bases.get(s, 0)
                rows.append((sid, n, d, sinks_checksum(sid, n, d, b), b))
            bulk.insert(conn, "INSERT OR REPLACE INTO sinks (sink, next_seq, "
                        "delivered, checksum, base) VALUES", rows)
        conn.execute(
            "UPDATE progress SET next_lsn=?, replay_from=?, commits=?, "
            "updated_at=?, checksum=?",
            (rec.next_lsn, rf, commits, time.time(),
             control_checksum("progress", rec.next_lsn, rf, commits)))
        if rec.meta:
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             list(rec.meta.items()))
        if rec.deleted:  # one pass over each table (partition_keys has
            # no index by pid)
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS gone "
                         "(pid INTEGER PRIMARY KEY)")
            conn.execute("DELETE FROM gone")
            bulk.insert(conn, "INSERT OR IGNORE INTO gone VALUES",
                        [(pid,) for pid in rec.deleted])
            for table in ("snapshot_parts", "snapshots", "partition_keys",
                          "partitions"):
                conn.execute(f"DELETE FROM {table} WHERE pid IN "
                             f"(SELECT pid FROM gone)")
            conn.execute("DELETE FROM gone")
        if rf > self._replay_from:
            conn.execute("DELETE FROM input_log WHERE first_lsn < ? AND "
                         "first_lsn + count <= ?", (rf, rf))
        for s, d in rec.delivered.items():
            if d > self._delivered.get(s, 0):
                conn.execute("DELETE FROM outbox WHERE sink=? AND first_seq < ? "
                             "AND first_seq + count <= ?", (self._sink_ids[s], d, d))

    def _write_position(self, next_lsn: int, fresh: bool = True) -> None:
        """The position after a commit; ``fresh``: its database size taken
        now, not reused (``SIZE_EVERY``)."""
        self._last_next_lsn = next_lsn
        now = time.monotonic()
        if fresh or now >= self._size_due:
            size = self._lock.size()
            if self._conn is not None and self._vacuums:
                # no more than the database as of this commit: a checkpoint
                # truncates the file to that after a vacuum step (vacuum.py)
                size = min(size, vacuum.logical_size(self._conn, self._page_bytes))
            self._size, self._size_due = size, now + SIZE_EVERY
        self._position.write(Position(self._commits, next_lsn, self._size))

    def close(self, update_position: bool = True) -> None:
        for reader in self._readers:
            try:
                reader.close()
            except sqlite3.Error:
                pass
        self._readers.clear()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._conn is not None:
            try:
                self._conn.close()  # checkpoints: the file may grow
            finally:
                self._conn = None
            if update_position and self._position.fd is not None:
                self._write_position(self._last_next_lsn)
        self._position.close()
        self._lock.release()


def snapshot_pieces(conn: sqlite3.Connection, blob: bytes,
                    part_bytes: int = PART_BYTES) -> list[bytes]:
    """A snapshot's bytes as the rows it is stored in: the first in
    ``snapshots``, the rest in ``snapshot_parts`` (each under SQLite's
    blob limit)."""
    part = min(part_bytes, _blob_limit(conn) // 2)
    if len(blob) <= part:
        return [blob]
    return [blob[i:i + part] for i in range(0, len(blob), part)]


def _blob_limit(conn: sqlite3.Connection) -> int:
    """The largest string or blob this connection takes (SQLite's
    SQLITE_LIMIT_LENGTH, 1e9 unless lowered; readable from Python 3.11)."""
    getlimit = getattr(conn, "getlimit", None)
    return getlimit(sqlite3.SQLITE_LIMIT_LENGTH) if getlimit else 1_000_000_000


def _make_directory(directory: str) -> None:
    if directory == "":
        raise StoreError("the resilience directory name is empty")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"resilience directory {directory!r} exists and is not a "
                         f"directory; give --resilience-dir a directory") from None
    except NotADirectoryError:
        raise StoreError(f"resilience directory {directory!r}: a part of the path "
                         f"is a file, not a directory; give --resilience-dir a "
                         f"directory") from None
    except PermissionError as e:
        raise StoreError(f"resilience directory {directory!r}: permission denied "
                         f"creating {e.filename!r}; choose a directory you can "
                         f"write to") from None


def _progress_read_only(path: str) -> tuple[int, int]:
    """(commits, next_lsn) as the database holds them, read without writing
    anything (a read-only connection never checkpoints), so a refused
    database is left exactly as it was found."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise CorruptionError(f"{path}: cannot open the database: {e}") from e
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:  # killed while creating it: nothing committed yet
            return 0, 0
        if version > len(schema.MIGRATIONS):
            raise schema.SchemaTooNew(
                f"{path}: database schema version {version} is newer than this "
                f"wallaroo understands ({len(schema.MIGRATIONS)}); upgrade wallaroo")
        if version >= 2:  # control checksums: a damaged row is named as such
            row = conn.execute("SELECT next_lsn, replay_from, commits, checksum "
                               "FROM progress").fetchone()
        else:
            row = conn.execute("SELECT next_lsn, replay_from, commits, NULL "
                               "FROM progress").fetchone()
    except sqlite3.DatabaseError as e:
        raise CorruptionError(f"{path}: cannot read the database: {e}") from e
    finally:
        conn.close()
    if row is None:
        raise CorruptionError(f"{path}: table progress has no row")
    next_lsn, replay_from, commits, cs = row
    if cs is not None and control_checksum("progress", next_lsn, replay_from,
                                           commits) != cs:
        raise reading.damaged(path, f"table progress (next_lsn {next_lsn}, "
                                    f"replay_from {replay_from}, commits {commits})")
    return commits, next_lsn


def accept_rollback(directory: str, worker: str) -> tuple[Position | None, Position]:
    """Record the database's own position as the last committed one: the
    operator accepts that the commits after it are lost.  Returns (old,
    new).  Refuses while a worker runs on the database."""
    path = db_path(directory, worker)
    if not os.path.exists(path):
        raise StoreError(f"{path} does not exist")
    lock = DatabaseLock(path)
    lock.acquire()
    try:
        pfile = PositionFile(path)
        try:
            old = pfile.read()
        except CorruptionError:
            old = None
        commits, next_lsn = _progress_read_only(path)
        new = Position(commits, next_lsn, lock.size())
        pfile.open()
        try:
            pfile.write(new)
            os.fsync(pfile.fd)
        finally:
            pfile.close()
        return old, new
    finally:
        lock.release()


def compact_database(directory: str, worker: str) -> tuple[int, int]:
    """``wallaroo recovery compact``: see ``compact.py``."""
    from .compact import compact
    return compact(db_path(directory, worker), _progress_read_only)


def discard_outputs(directory: str, worker: str, sink: str) -> tuple[str, int]:
    """Drop the undelivered outputs of one sink (``PIPELINE:POSITION`` or
    ``#ID``), on purpose: the operator's way out of a refusal for outputs
    whose sink the application no longer has.  Returns (the sink, how many
    outputs were discarded).  Refused while a worker runs on the
    database."""
    path = db_path(directory, worker)
    if not os.path.exists(path):
        raise StoreError(f"{path} does not exist")
    lock = DatabaseLock(path)
    lock.acquire()
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < 3:
                raise StoreError(f"{path} was written by an earlier release "
                                 f"(schema {version}); start this release on it "
                                 f"once, then discard")
            sid = sink_identities.find(conn, path, sink)
            idents = sink_identities.read(conn, path)
            row = conn.execute("SELECT next_seq, delivered, base FROM sinks "
                               "WHERE sink=?", (sid,)).fetchone()
            n, d, b = row if row else (0, 0, 0)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM outbox WHERE sink=?", (sid,))
            if row:
                conn.execute("UPDATE sinks SET delivered=?, checksum=? WHERE sink=?",
                             (n, sinks_checksum(sid, n, n, b), sid))
            conn.execute("COMMIT")
            return sink_identities.describe(idents.get(sid), sid), n - d
        finally:
            conn.close()
    finally:
        lock.release()


def fingerprint_problems(old: dict, new: dict) -> list[str]:
    """Why a directory written by ``old`` cannot be used by ``new``."""
    problems = []
    if old.get("application") != new.get("application"):
        problems.append(f"it belongs to application {old.get('application')!r}, "
                        f"not {new.get('application')!r}")
        return problems
    for name, was in sorted(old.get("states", {}).items()):
        now = new["states"].get(name)
        if now is None:
            problems.append(f"state {name!r} is in the directory but not in "
                            f"the application")
            continue
        for field in ("class", "partitioning", "partition_function",
                      "declared_keys"):
            if was.get(field) != now.get(field):
                problems.append(
                    f"state {name!r}: {field.replace('_', ' ')} was "
                    f"{_short(was.get(field))}, now {_short(now.get(field))}")
    return problems  # sinks: by identity (sink_identities.map_sinks)


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
