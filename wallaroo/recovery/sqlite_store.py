"""The durable store: one SQLite database per worker, WAL journal mode.

``<dir>/<worker>.db`` (0600 in a 0700 directory) with an exclusive lock file
beside it.  One transaction per batch: its input rows, output rows, new
partitions, snapshots, stream counts and delivery positions, and the
``replay_from`` that recovery starts at.  Input-log rows below
``replay_from`` and outbox rows below each sink's delivery position are
deleted in the same transaction, so the files stay the size of the backlog.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Iterator

from . import schema
from .errors import CorruptionError, IncompatibleDirectory, StoreError
from .lock import WorkerLock
from .records import (CommitRecord, InputRow, OutputRow, PartitionRow,
                      Recovered, SnapshotRow)

SYNCHRONOUS = ("NORMAL", "FULL")


def db_path(directory: str, worker: str) -> str:
    return os.path.join(directory, f"{worker}.db")


class SQLiteStore:
    durable = True

    def __init__(self, directory: str, worker: str, synchronous: str = "NORMAL"):
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, "
                             f"got {synchronous!r}")
        self.directory = directory
        self.worker = worker
        self.synchronous = synchronous
        self.path = db_path(directory, worker)
        self._lock = WorkerLock(self.path + ".lock")
        self._conn: sqlite3.Connection | None = None
        self._replay_from = 0
        self._delivered: dict[int, int] = {}
        self._next_seq: dict[int, int] = {}

    # -- opening ---------------------------------------------------------
    def open(self, fingerprint: dict) -> Recovered:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._lock.acquire()
        try:
            return self._open(fingerprint)
        except BaseException:
            self.close()
            raise

    def _open(self, fingerprint: dict) -> Recovered:
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            conn = sqlite3.connect(self.path, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("PRAGMA cache_size=-65536")
            self._conn = conn
            schema.migrate(conn, self.path)
            self._check_fingerprint(fingerprint)
            return self._load()
        except sqlite3.DatabaseError as e:
            raise CorruptionError(f"{self.path}: cannot read the resilience "
                                  f"database: {e}") from e

    def _check_fingerprint(self, fp: dict) -> None:
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
            return
        old = json.loads(row[0])
        problems = fingerprint_problems(old, fp)
        if problems:
            raise IncompatibleDirectory(
                f"{self.path} holds state this application cannot use:\n  - "
                + "\n  - ".join(problems)
                + "\nStarting on it would mix states or silently start empty. "
                  "Use another --resilience-dir (or --name), or remove this "
                  "worker's files if the old state is no longer wanted.")
        added = sorted(set(fp["states"]) - set(old["states"]))
        if added or old != fp:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE meta SET value=? WHERE key='fingerprint'",
                         (json.dumps(fp, sort_keys=True),))
            conn.execute("COMMIT")

    def _load(self) -> Recovered:
        conn = self._conn
        next_lsn, replay_from, commits = conn.execute(
            "SELECT next_lsn, replay_from, commits FROM progress").fetchone()
        rec = Recovered(fresh=(commits == 0), next_lsn=next_lsn,
                        replay_from=replay_from, commits=commits)
        partitions = rec.partitions
        snaps = rec.snapshots
        # BLOBs are read with CAST and their storage class checked: a damaged
        # one that SQLite would hand back as TEXT is reported naming its row.
        for (pid, state, key_repr, created, key_cs, key, key_type, lsn, pickler,
             snap_cs, blob, blob_type) in conn.execute(
                "SELECT p.pid, p.state, p.key_repr, p.created_lsn, p.checksum, "
                "CAST(p.key AS BLOB), typeof(p.key), s.lsn, s.pickler, s.checksum, "
                "CAST(s.state AS BLOB), typeof(s.state) FROM partitions p "
                "LEFT JOIN snapshots s USING (pid) ORDER BY p.pid"):
            prow = PartitionRow(pid, state, key, key_repr, created)
            if key_type != "blob" or prow.checksum() != key_cs:
                raise CorruptionError(
                    f"{self.path}: the key of partition {pid} (state {state!r}, "
                    f"key {key_repr}) failed its checksum; refusing to run on "
                    f"damaged state")
            partitions.append(prow)
            if lsn is not None:
                snap = SnapshotRow(pid, lsn, blob, pickler)
                if blob_type != "blob" or snap.checksum() != snap_cs:
                    raise CorruptionError(
                        f"{self.path}: the snapshot of partition {pid} (state "
                        f"{state!r}, key {key_repr}) at lsn {lsn} failed its "
                        f"checksum; refusing to run on damaged state")
                snaps[pid] = snap
        orphans = [pid for (pid,) in conn.execute(
            "SELECT pid FROM snapshots WHERE pid NOT IN (SELECT pid FROM partitions)")]
        if orphans:
            raise CorruptionError(
                f"{self.path}: snapshots {orphans[:10]} belong to no known "
                f"partition (a damaged partition id); refusing to run on "
                f"damaged state")
        for source, stream, count in conn.execute(
                "SELECT source, stream, count FROM streams"):
            rec.streams[(source, stream)] = count
        for sink, next_seq, delivered in conn.execute(
                "SELECT sink, next_seq, delivered FROM sinks"):
            rec.next_out_seq[sink] = next_seq
            rec.delivered[sink] = delivered
        self._replay_from = replay_from
        self._delivered = dict(rec.delivered)
        self._next_seq = dict(rec.next_out_seq)
        return rec

    # -- reading the backlog --------------------------------------------
    def replay_inputs(self, from_lsn: int) -> Iterator[InputRow]:
        try:
            yield from self._replay_inputs(from_lsn)
        except sqlite3.DatabaseError as e:
            raise CorruptionError(f"{self.path}: cannot read the input log: "
                                  f"{e}") from e

    def _replay_inputs(self, from_lsn: int) -> Iterator[InputRow]:
        cur = self._conn.execute(
            "SELECT first_lsn, count, source, stream, first_seq, failed, "
            "checksum, CAST(frames AS BLOB), typeof(frames) FROM input_log "
            "WHERE first_lsn + count > ? ORDER BY first_lsn", (from_lsn,))
        for first, count, source, stream, seq, failed, cs, frames, ftype in cur:
            try:
                failed_idx = tuple(int(x) for x in failed.split(",") if x)
            except (AttributeError, ValueError):
                failed_idx = None  # damaged: the checksum will not match
            row = InputRow(first, source, stream, seq, count, frames, failed_idx)
            if ftype != "blob" or row.checksum() != cs:
                raise CorruptionError(
                    f"{self.path}: input-log record at lsn {first} ({count} "
                    f"messages from {source!r}) failed its checksum; refusing "
                    f"to replay damaged input")
            yield row

    def undelivered_outputs(self, delivered: dict[int, int]) -> Iterator[OutputRow]:
        try:
            yield from self._undelivered_outputs(delivered)
        except sqlite3.DatabaseError as e:
            raise CorruptionError(f"{self.path}: cannot read the outbox: {e}") from e

    def _undelivered_outputs(self, delivered: dict[int, int]) -> Iterator[OutputRow]:
        cur = self._conn.execute(
            "SELECT sink, first_seq, count, checksum, CAST(data AS BLOB), "
            "typeof(data) FROM outbox ORDER BY sink, first_seq")
        for sink, first, count, cs, data, dtype in cur:
            row = OutputRow(sink, first, count, data)
            if row.end_seq <= delivered.get(sink, 0):
                continue
            if dtype != "blob" or row.checksum() != cs:
                raise CorruptionError(
                    f"{self.path}: outbox record for sink {sink} at output "
                    f"{first} ({count} outputs) failed its checksum")
            yield row

    # -- committing ------------------------------------------------------
    def commit(self, rec: CommitRecord) -> None:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self.path}: commit on a closed store")
        rf = rec.replay_from
        conn.execute("BEGIN")
        try:
            inputs = [r for r in rec.inputs if r.end_lsn > rf]
            if inputs:
                conn.executemany(
                    "INSERT INTO input_log VALUES (?,?,?,?,?,?,?,?,?)",
                    [(r.first_lsn, r.count, r.source, r.stream, r.first_seq,
                      ",".join(map(str, r.failed)), len(r.frames),
                      r.checksum(), r.frames) for r in inputs])
            if rec.outputs:
                conn.executemany(
                    "INSERT INTO outbox VALUES (?,?,?,?,?,?)",
                    [(o.sink, o.first_seq, o.count, len(o.data), o.checksum(),
                      o.data) for o in rec.outputs])
            if rec.partitions:
                conn.executemany(
                    "INSERT INTO partitions VALUES (?,?,?,?,?,?)",
                    [(p.pid, p.state, p.key_repr, p.created_lsn,
                      p.checksum(), p.key)
                     for p in rec.partitions])
            if rec.snapshots:
                conn.executemany(
                    "INSERT OR REPLACE INTO snapshots VALUES (?,?,?,?,?,?)",
                    [(s.pid, s.lsn, len(s.blob), s.pickler, s.checksum(), s.blob)
                     for s in rec.snapshots])
            if rec.streams:
                conn.executemany(
                    "INSERT INTO streams VALUES (?,?,?) ON CONFLICT(source, "
                    "stream) DO UPDATE SET count=excluded.count",
                    [(src, st, n) for (src, st), n in rec.streams.items()])
            sinks = set(rec.next_out_seq) | set(rec.delivered)
            if sinks:
                next_seq = {**self._next_seq, **rec.next_out_seq}
                delivered = {**self._delivered, **rec.delivered}
                conn.executemany(
                    "INSERT OR REPLACE INTO sinks VALUES (?,?,?)",
                    [(s, next_seq.get(s, 0), delivered.get(s, 0)) for s in sinks])
            conn.execute(
                "UPDATE progress SET next_lsn=?, replay_from=?, "
                "commits=commits+1, updated_at=?",
                (rec.next_lsn, rf, time.time()))
            if rf > self._replay_from:
                conn.execute(
                    "DELETE FROM input_log WHERE first_lsn < ? AND "
                    "first_lsn + count <= ?", (rf, rf))
            for s, d in rec.delivered.items():
                if d > self._delivered.get(s, 0):
                    conn.execute(
                        "DELETE FROM outbox WHERE sink=? AND first_seq < ? "
                        "AND first_seq + count <= ?", (s, d, d))
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self._replay_from = max(self._replay_from, rf)
        self._next_seq.update(rec.next_out_seq)
        for s, d in rec.delivered.items():
            if d > self._delivered.get(s, 0):
                self._delivered[s] = d

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
        self._lock.release()


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
    if old.get("sinks") != new.get("sinks"):
        problems.append(f"the application had {old.get('sinks')} sinks, now "
                        f"{new.get('sinks')}: undelivered outputs would go to "
                        f"the wrong sink")
    return problems


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
