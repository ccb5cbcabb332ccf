"""Reading a worker's database back, every row checked against its checksum
(DESIGN.md §4.7): a damaged row is refused naming the file, the table and the
row, never served."""

from __future__ import annotations

import sqlite3
from typing import Iterator

from .errors import CorruptionError
from .records import (InputRow, OutputRow, PartitionRow, PendingRow, Recovered,
                      SnapshotRow, control_checksum, sinks_checksum)


def damaged(path: str, what: str) -> CorruptionError:
    return CorruptionError(f"{path}: {what} failed its checksum; refusing to run "
                           f"on damaged state")


def load(conn: sqlite3.Connection, path: str) -> tuple[Recovered, set[int]]:
    """Everything a worker needs before replay, except its partitions (it
    loads those as it needs them: ``SQLiteStore.partition_finder``); also
    the pids whose snapshot is split over ``snapshot_parts`` rows."""
    row = conn.execute("SELECT next_lsn, replay_from, commits, checksum "
                       "FROM progress").fetchone()
    if row is None:
        raise CorruptionError(f"{path}: table progress has no row")
    next_lsn, replay_from, commits, cs = row
    if control_checksum("progress", next_lsn, replay_from, commits) != cs:
        raise damaged(path, f"table progress (next_lsn {next_lsn}, replay_from "
                             f"{replay_from}, commits {commits})")
    if not 0 <= replay_from <= next_lsn:
        raise CorruptionError(f"{path}: table progress: replay_from {replay_from} "
                              f"is not within 0..next_lsn {next_lsn}")
    (top,) = conn.execute("SELECT max(pid) FROM partitions").fetchone()
    # a new member's database holds the partitions it took before any commit
    rec = Recovered(fresh=(commits == 0 and top is None), next_lsn=next_lsn,
                    replay_from=replay_from, commits=commits)
    # pids are never used twice: a partition given to another worker
    # (moves.py) leaves a gap, and its old pid may be below the key
    # index's watermark, where a new partition would not be looked for
    from .key_index import read_watermark
    from .moves import GIVEN
    rec.next_pid = max(0 if top is None else top + 1, read_watermark(conn, path))
    # without a give, pids run without gaps: no count(*) over every row
    gave = conn.execute("SELECT 1 FROM meta WHERE key=?", (GIVEN,)).fetchone()
    rec.partitions_on_disk = conn.execute(
        "SELECT count(*) FROM partitions").fetchone()[0] if gave else (
            0 if top is None else top + 1)
    parted = {pid for (pid,) in conn.execute(
        "SELECT DISTINCT pid FROM snapshot_parts")}
    for source, stream, count, seen, cs in conn.execute(
            "SELECT source, stream, count, last_seen, checksum FROM streams"):
        if control_checksum("streams", source, stream, count, seen) != cs:
            raise damaged(path, f"table streams row (source {source!r}, stream "
                                 f"{stream!r}, count {count})")
        rec.streams[(source, stream)] = count
        rec.stream_seen[(source, stream)] = seen
    for sink, next_seq, delivered, base, cs in conn.execute(
            "SELECT sink, next_seq, delivered, base, checksum FROM sinks"):
        if sinks_checksum(sink, next_seq, delivered, base) != cs:
            raise damaged(path, f"table sinks row (sink {sink}, next_seq "
                                 f"{next_seq}, delivered {delivered})")
        if not 0 <= delivered <= next_seq:
            raise CorruptionError(f"{path}: table sinks row {sink}: delivered "
                                  f"{delivered} is not within 0..{next_seq}")
        rec.next_out_seq[sink] = next_seq
        rec.delivered[sink] = delivered
        if base:
            rec.sink_bases[sink] = base
    for (pid, source, stream, first_seq, count, consumed, cs, ccs, frames,
         ftype) in conn.execute(
            "SELECT id, source, stream, first_seq, count, consumed, checksum, "
            "consumed_checksum, CAST(frames AS BLOB), typeof(frames) "
            "FROM pending_input ORDER BY id"):
        p = PendingRow(pid, source, stream, first_seq, count, frames, consumed)
        if ftype != "blob" or p.checksum() != cs or p.consumed_checksum() != ccs:
            raise damaged(path, f"table pending_input row {pid} ({count} "
                                 f"messages from {source!r})")
        if not 0 <= consumed < count:
            raise CorruptionError(f"{path}: table pending_input row {pid}: "
                                  f"consumed {consumed} of {count}")
        rec.pending.append(p)
    return rec, parted


# The columns a partition is read with, its snapshot's beside it.  BLOBs
# are read with CAST and their storage class checked: a damaged one that
# SQLite would hand back as TEXT is reported naming its row.
PARTITION_COLUMNS = (
    "p.pid, p.state, p.key_repr, p.created_lsn, p.checksum, CAST(p.key AS BLOB), "
    "typeof(p.key), p.key_group, p.key_hash, s.lsn, s.pickler, s.checksum, "
    "CAST(s.state AS BLOB), typeof(s.state), s.parts, s.classes")
PARTITIONS_FROM = "FROM partitions p LEFT JOIN snapshots s USING (pid)"


def partition_row(path: str, cols: tuple) -> PartitionRow:
    """The partition of a row read with ``PARTITION_COLUMNS``, checked."""
    pid, state, key_repr, created, key_cs, key, key_type, group, khash = cols[:9]
    prow = PartitionRow(pid, state, key, key_repr, created, group, khash)
    if key_type != "blob" or prow.checksum() != key_cs:
        raise _damaged_partition(path, "the key of", prow, "failed its checksum")
    return prow


def _damaged_partition(path: str, what: str, prow: PartitionRow,
                       why: str) -> CorruptionError:
    return CorruptionError(
        f"{path}: {what} partition {prow.pid} (state {prow.state!r}, key "
        f"{prow.key_repr}) {why}; refusing to run on damaged state")


def snapshot_row(conn: sqlite3.Connection, path: str, prow: PartitionRow,
                 cols: tuple) -> SnapshotRow | None:
    """The snapshot of a row read with ``PARTITION_COLUMNS`` (None: the
    partition has none yet), its extra parts read and its checksum checked."""
    lsn, pickler, snap_cs, blob, blob_type, parts, _classes = cols[9:]
    if lsn is None:
        return None
    if parts:
        rest = snapshot_parts(conn, prow.pid)
        if len(rest) != parts:
            raise _damaged_partition(path, "the snapshot of", prow,
                                     f"has {len(rest)} of its {parts} extra "
                                     f"parts in table snapshot_parts")
        blob = b"".join([blob or b"", *rest])
    snap = SnapshotRow(prow.pid, lsn, blob, pickler)
    if blob_type != "blob" or snap.checksum() != snap_cs:
        raise _damaged_partition(path, "the snapshot of", prow,
                                 f"at lsn {lsn} failed its checksum")
    return snap


def snapshot_parts(conn: sqlite3.Connection, pid: int) -> list[bytes]:
    """The extra parts of a split snapshot (``snapshot_parts``), in order."""
    return [d for (d,) in conn.execute(
        "SELECT CAST(data AS BLOB) FROM snapshot_parts WHERE pid=? ORDER BY part",
        (pid,))]


def all_partitions(conn: sqlite3.Connection, path: str
                   ) -> tuple[list[PartitionRow], dict[int, SnapshotRow]]:
    """Every partition and snapshot, checked (tools and tests; a worker
    loads partitions one by one as it needs them)."""
    partitions: list[PartitionRow] = []
    snaps: dict[int, SnapshotRow] = {}
    for cols in conn.execute(f"SELECT {PARTITION_COLUMNS} {PARTITIONS_FROM} "
                             f"ORDER BY p.pid").fetchall():
        prow = partition_row(path, cols)
        partitions.append(prow)
        snap = snapshot_row(conn, path, prow, cols)
        if snap is not None:
            snaps[prow.pid] = snap
    check_orphans(conn, path)
    return partitions, snaps


def check_orphans(conn: sqlite3.Connection, path: str) -> None:
    orphans = [pid for (pid,) in conn.execute(
        "SELECT pid FROM snapshots WHERE pid NOT IN (SELECT pid FROM partitions) "
        "LIMIT 10")]
    if orphans:
        raise CorruptionError(
            f"{path}: snapshots {orphans} belong to no known partition (a "
            f"damaged partition id); refusing to run on damaged state")


def input_rows(conn: sqlite3.Connection, path: str, from_lsn: int) -> Iterator[InputRow]:
    cur = conn.execute(
        "SELECT first_lsn, count, source, stream, first_seq, failed, checksum, "
        "CAST(frames AS BLOB), typeof(frames), connector, ingest_ns FROM input_log "
        "WHERE first_lsn + count > ? ORDER BY first_lsn", (from_lsn,))
    for (first, count, source, stream, seq, failed, cs, frames, ftype, conn_kind,
         ingest) in cur:
        try:
            failed_idx = tuple(int(x) for x in failed.split(",") if x)
        except (AttributeError, ValueError):
            failed_idx = None  # damaged: the checksum will not match
        row = InputRow(first, source, stream, seq, count, frames, failed_idx,
                       conn_kind, ingest)
        if ftype != "blob" or row.checksum() != cs:
            raise CorruptionError(
                f"{path}: input-log record at lsn {first} ({count} messages "
                f"from {source!r}) failed its checksum; refusing to replay "
                f"damaged input")
        yield row


def output_rows(conn: sqlite3.Connection, path: str, delivered: dict[int, int],
                sink: int | None = None) -> Iterator[OutputRow]:
    """Outbox rows past each sink's delivery position (of one ``sink``
    only, when given)."""
    cur = conn.execute(
        "SELECT sink, first_seq, count, checksum, CAST(data AS BLOB), "
        "typeof(data), framed FROM outbox "
        + ("" if sink is None else "WHERE sink=? AND first_seq + count > ? ")
        + "ORDER BY sink, first_seq",
        () if sink is None else (sink, delivered.get(sink, 0)))
    for sink, first, count, cs, data, dtype, framed in cur:
        row = OutputRow(sink, first, count, data, bool(framed))
        if row.end_seq <= delivered.get(sink, 0):
            continue
        if dtype != "blob" or row.checksum() != cs:
            raise CorruptionError(
                f"{path}: outbox record for sink {sink} at output {first} "
                f"({count} outputs) failed its checksum")
        yield row
