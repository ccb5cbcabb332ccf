"""The resilience database's schema, as an append-only list of migrations.

``PRAGMA user_version`` holds how many have been applied.  Never edit a
migration that has shipped: add a new one.  The tables are plain so that
``sqlite-utils tables DIR/initializer.db --counts`` and ``sqlite-utils rows``
can read them.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Callable, Union

from . import reading
from .errors import StoreError
from .records import control_checksum

Migration = Union[str, Callable[[sqlite3.Connection], None]]


_V2_SQL = """
    ALTER TABLE progress ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE streams ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE streams ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sinks ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE snapshots ADD COLUMN parts INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE snapshot_parts (
        pid INTEGER NOT NULL,
        part INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (pid, part)
    );
    CREATE TABLE pending_input (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        stream TEXT,
        first_seq INTEGER,
        count INTEGER NOT NULL,
        consumed INTEGER NOT NULL,
        size INTEGER NOT NULL,
        checksum INTEGER NOT NULL,
        consumed_checksum INTEGER NOT NULL,
        frames BLOB NOT NULL
    );
    """


def _v2_hardening(conn: sqlite3.Connection) -> None:
    """Migration 2, hardening: checksums over every control value recovery
    trusts (those a version 1 database holds are trusted as they are when it
    is migrated); input read but not processed when a worker stopped;
    snapshots split over rows (a state of any size fits under SQLite's blob
    limit); when each stream was last seen (so idle ones can be forgotten)."""
    for stmt in _statements(_V2_SQL):
        conn.execute(stmt)
    now = int(time.time())
    for next_lsn, replay_from, commits in conn.execute(
            "SELECT next_lsn, replay_from, commits FROM progress").fetchall():
        conn.execute("UPDATE progress SET checksum=?", (control_checksum(
            "progress", next_lsn, replay_from, commits),))
    for source, stream, count in conn.execute(
            "SELECT source, stream, count FROM streams").fetchall():
        conn.execute("UPDATE streams SET last_seen=?, checksum=? WHERE source=? "
                     "AND stream=?", (now, control_checksum(
                         "streams", source, stream, count, now), source, stream))
    for sink, next_seq, delivered in conn.execute(
            "SELECT sink, next_seq, delivered FROM sinks").fetchall():
        conn.execute("UPDATE sinks SET checksum=? WHERE sink=?", (control_checksum(
            "sinks", sink, next_seq, delivered), sink))


_V3_SQL = """
    ALTER TABLE outbox ADD COLUMN framed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sinks ADD COLUMN base INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE sink_identities (
        sink INTEGER PRIMARY KEY,
        pipeline TEXT NOT NULL,
        position INTEGER NOT NULL,
        checksum INTEGER NOT NULL,
        UNIQUE (pipeline, position)
    );
    """


def _v3_outputs(conn: sqlite3.Connection) -> None:
    """Migration 3, exactly-once outputs: ``framed`` outbox rows hold a
    resumable sink's protocol frames, so it can resend from any output, and
    ``sinks.base`` records a resumable receiver's numbering; sinks get identities
    (pipeline, place among its sinks), so outputs can never reach another
    sink when the application changes.  Rows of earlier versions keep
    neither: the store maps their sink numbers to identities when it first
    opens them with the application (``SQLiteStore._map_sinks``)."""
    for stmt in _statements(_V3_SQL):
        conn.execute(stmt)


_V4_SQL = """
    ALTER TABLE partitions ADD COLUMN key_group INTEGER NOT NULL DEFAULT -1;
    ALTER TABLE input_log ADD COLUMN connector TEXT NOT NULL DEFAULT 'tcp';
    """


def _v4_cluster(conn: sqlite3.Connection) -> None:
    """Migration 4, many workers: each partition records its key group (so
    its state can move with it later), and each input row the connector
    that brought it (``peer`` rows hold batches from another worker).  The
    membership is kept in ``meta`` (key ``membership``)."""
    for stmt in _statements(_V4_SQL):
        conn.execute(stmt)


_V5_SQL = """
    ALTER TABLE partitions ADD COLUMN key_hash INTEGER;
    CREATE INDEX partitions_by_key ON partitions (state, key_hash);
    CREATE TABLE snapshot_classes (
        id INTEGER PRIMARY KEY,
        refs TEXT NOT NULL UNIQUE,
        checksum INTEGER NOT NULL
    );
    ALTER TABLE snapshots ADD COLUMN classes INTEGER;
    """


def _v5_lazy_state(conn: sqlite3.Connection) -> None:
    """Migration 5, state at scale: a worker finds a partition by its
    state and its key's stable hash (``partitions.key_hash``, indexed)
    instead of reading every partition when it starts, and each snapshot
    names the set of class references loading it needs
    (``snapshot_classes``), so those can be checked before the worker is
    ready without reading the snapshots.  Rows of earlier versions: the
    references are read here from each snapshot's pickle opcodes (nothing
    is imported); a snapshot made by the application's ``serialize()`` gets
    the empty set (its state class is checked by the fingerprint).  Key
    hashes need the keys unpickled, so the worker fills them in when it
    first opens the database with the application
    (``SQLiteStore.hash_partitions``)."""
    from .snapshots import APPLICATION, pickle_refs
    for stmt in _statements(_V5_SQL):
        conn.execute(stmt)
    ids: dict[str, int] = {}
    for pid, pickler, parts in conn.execute(
            "SELECT pid, pickler, parts FROM snapshots").fetchall():
        refs: tuple = ()
        if pickler != APPLICATION:
            (blob,) = conn.execute("SELECT CAST(state AS BLOB) FROM snapshots "
                                   "WHERE pid=?", (pid,)).fetchone()
            if parts:
                blob = b"".join([blob or b"", *reading.snapshot_parts(conn, pid)])
            try:
                refs = pickle_refs(blob or b"")
            except Exception:  # damaged: its checksum says so when it is read
                refs = ()
        text = class_set_text(refs)
        cid = ids.get(text)
        if cid is None:
            cid = ids[text] = len(ids) + 1
            conn.execute("INSERT INTO snapshot_classes VALUES (?,?,?)",
                         (cid, text, class_set_checksum(cid, text)))
        conn.execute("UPDATE snapshots SET classes=? WHERE pid=?", (cid, pid))


_V6_SQL = """
    CREATE TABLE partition_keys (
        state TEXT NOT NULL,
        key_hash INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        PRIMARY KEY (state, key_hash, pid)
    ) WITHOUT ROWID;
    INSERT INTO partition_keys
        SELECT state, key_hash, pid FROM partitions WHERE key_hash IS NOT NULL;
    DROP INDEX partitions_by_key;
    CREATE INDEX partitions_unhashed ON partitions (state) WHERE key_hash IS NULL;
    """


def _v6_key_index(conn: sqlite3.Connection) -> None:
    """Migration 6, the key index (``key_index.py``): partitions are found
    through table ``partition_keys``, merged in sorted steps, instead of
    an index on ``partitions`` that took a random insert per new key.
    Every partition there now is in it (the watermark is past them); those
    of schema 4 and earlier, whose key hashes the worker fills in at its
    first start, are added then (the partial index finds them)."""
    from .key_index import META_KEY, watermark_text
    for stmt in _statements(_V6_SQL):
        conn.execute(stmt)
    (top,) = conn.execute("SELECT max(pid) FROM partitions").fetchone()
    conn.execute("INSERT INTO meta VALUES (?, ?)",
                 (META_KEY, watermark_text(0 if top is None else top + 1)))


def class_set_text(refs) -> str:
    return "\n".join(refs)


def class_set_checksum(cid: int, text: str) -> int:
    return control_checksum("snapshot_classes", cid, text)


MIGRATIONS: list[Migration] = [
    # 1: the first schema.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE progress (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        next_lsn INTEGER NOT NULL,
        replay_from INTEGER NOT NULL,
        commits INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    INSERT INTO progress VALUES (1, 0, 0, 0, 0.0);
    CREATE TABLE partitions (
        pid INTEGER PRIMARY KEY,
        state TEXT NOT NULL,
        key_repr TEXT NOT NULL,
        created_lsn INTEGER NOT NULL,
        checksum INTEGER NOT NULL,
        key BLOB NOT NULL
    );
    CREATE TABLE snapshots (
        pid INTEGER PRIMARY KEY REFERENCES partitions(pid),
        lsn INTEGER NOT NULL,
        size INTEGER NOT NULL,
        pickler TEXT NOT NULL,
        checksum INTEGER NOT NULL,
        state BLOB NOT NULL
    );
    CREATE TABLE input_log (
        first_lsn INTEGER PRIMARY KEY,
        count INTEGER NOT NULL,
        source TEXT NOT NULL,
        stream TEXT,
        first_seq INTEGER,
        failed TEXT NOT NULL,
        size INTEGER NOT NULL,
        checksum INTEGER NOT NULL,
        frames BLOB NOT NULL
    );
    CREATE TABLE outbox (
        sink INTEGER NOT NULL,
        first_seq INTEGER NOT NULL,
        count INTEGER NOT NULL,
        size INTEGER NOT NULL,
        checksum INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (sink, first_seq)
    );
    CREATE TABLE streams (
        source TEXT NOT NULL,
        stream TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (source, stream)
    );
    CREATE TABLE sinks (
        sink INTEGER PRIMARY KEY,
        next_seq INTEGER NOT NULL,
        delivered INTEGER NOT NULL
    );
    """,
    # 2: hardening (see _v2_hardening).
    _v2_hardening,
    # 3: exactly-once outputs (see _v3_outputs).
    _v3_outputs,
    # 4: many workers (see _v4_cluster).
    _v4_cluster,
    # 5: state at scale (see _v5_lazy_state).
    _v5_lazy_state,
    # 6: the key index (see _v6_key_index).
    _v6_key_index,
    # 7: windows (the 0.6 API): each input row's ingest time, the event
    # time and watermark its messages had, so a replay puts them in the
    # same windows.  0 in rows of earlier versions (no windows then).
    """
    ALTER TABLE input_log ADD COLUMN ingest_ns INTEGER NOT NULL DEFAULT 0;
    """,
]


class SchemaTooNew(StoreError):
    """Written by a newer wallaroo."""


def migrate(conn: sqlite3.Connection, path: str = "database") -> int:
    """Apply the migrations this database has not seen; returns the version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"{path}: database schema version {version} is newer than this "
            f"wallaroo understands ({len(MIGRATIONS)}); upgrade wallaroo")
    for i in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            step = MIGRATIONS[i]
            if callable(step):
                step(conn)
            else:
                for stmt in _statements(step):
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    out, buf = [], ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
