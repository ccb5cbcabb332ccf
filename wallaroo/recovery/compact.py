"""``wallaroo recovery compact DIR``: give a stopped worker's free pages
back to the file system (a full ``VACUUM``), offline.  A database made
before incremental vacuum (``vacuum.py``) is converted to it on the way.

A running worker reuses the pages its deleted rows free (the input log
below ``replay_from``, delivered outputs, replaced snapshots) and gives a
burst's back in small steps (``vacuum.py``); this gives back all of them
at once.  Refused while
a worker runs on the database, and refused on a database that fails the
same checks a worker makes before starting (a rolled-back database is
never compacted into looking whole).

The position file records the database's size after the last commit (a
truncated file is refused at the next start).  It is rewritten with the
compacted size *before* the checkpoint that shrinks the file: a crash
between the two leaves a file larger than recorded, which is accepted, and
after both, exactly the recorded size.
"""

from __future__ import annotations

import os
import sqlite3

from .errors import CorruptionError, StoreError, StoreLocked
from .files import (DatabaseLock, Position, PositionFile, check_database_file,
                    check_position, holder_status, read_manifest)


def _files_size(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal")
               if os.path.exists(path + s))


def compact(path: str, progress_read_only) -> tuple[int, int]:
    """VACUUM the database at ``path``; -> (bytes before, bytes after),
    the database and its WAL together."""
    if not os.path.exists(path):
        raise StoreError(f"{path} does not exist")
    lock = DatabaseLock(path)
    try:
        lock.acquire()
    except StoreLocked:
        raise StoreLocked(f"{path} is {holder_status(path)}: a worker runs on it; "
                          f"stop it first (compacting is done offline)") from None
    try:
        manifest = read_manifest(path)
        check_database_file(path, manifest)
        pfile = PositionFile(path)
        pos = pfile.read()
        commits, next_lsn = progress_read_only(path)
        check_position(path, pos, manifest, lock.size(), commits, next_lsn)
        before = _files_size(path)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            # databases made before incremental vacuum (vacuum.py) take it
            # here: VACUUM rebuilds the file with the mode set
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            if pos is not None:
                pfile.open()
                try:
                    pfile.write(Position(pos.commits, pos.next_lsn,
                                         min(pos.db_size, pages * page_size)))
                    os.fsync(pfile.fd)
                finally:
                    pfile.close()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.DatabaseError as e:
            raise CorruptionError(f"{path}: compacting failed: {e}") from e
        finally:
            conn.close()
        return before, _files_size(path)
    finally:
        lock.release()
