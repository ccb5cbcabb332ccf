"""The files beside a worker's database that SQLite cannot vouch for itself.

``<worker>.db``            the SQLite database (WAL mode), locked with ``flock``
                           while a process runs on it: deleting any other file
                           cannot let a second process in.
``<worker>.db.manifest``   written once, when the database is created: this
                           directory has held this worker's state.  A missing,
                           emptied or replaced database is then refused instead
                           of being taken for a fresh start.
``<worker>.db.position``   the last committed position (commits, next lsn,
                           database size), rewritten in place after every
                           commit without an fsync.  SQLite ends its log at a
                           damaged or missing ``-wal`` frame by design, rolling
                           back acknowledged commits without a word; a database
                           behind this file is refused.  A process crash keeps
                           the page cache, so the file is exact for SIGKILL;
                           after a power loss with ``synchronous=NORMAL`` it
                           may name commits SQLite really lost, and the refusal
                           is then the truth.
``<worker>.db.lock``       the pid of the process holding the database (for
                           ``recovery inspect``; not the lock itself).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import struct
import time
import uuid
import zlib
from dataclasses import dataclass

from .errors import (CorruptionError, DiskFull, MissingDatabase,
                     RollbackDetected, StoreError, StoreLocked)

MANIFEST_SUFFIX = ".manifest"
POSITION_SUFFIX = ".position"
LOCK_SUFFIX = ".lock"
TRIAL_SUFFIX = ".trial"
TRIAL_BYTES = 1024 * 1024


# -- the lock: flock on the database file itself ----------------------------

class DatabaseLock:
    """An exclusive ``flock`` on the database file.  The kernel drops it when
    the process dies (SIGKILL included).  SQLite's own locks are POSIX
    record locks, which ``flock`` does not touch on Linux; the descriptor is
    opened before SQLite opens the file and closed after SQLite closes it,
    so closing it never drops SQLite's locks."""

    def __init__(self, db_path: str):
        self.db_path = db_path
        self.info_path = db_path + LOCK_SUFFIX
        self.fd: int | None = None

    def acquire(self) -> int:
        fd = os.open(self.db_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"{self.db_path} is held by another process{_holder(self.info_path)}: "
                f"two processes must never run on one database; stop the "
                f"other one or give this worker another --name") from None
        self.fd = fd
        try:
            info = os.open(self.info_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(info, f"{os.getpid()}\n".encode())
            finally:
                os.close(info)
        except OSError:
            pass  # informational only
        return fd

    def size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd is not None else 0

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _holder(info_path: str) -> str:
    try:
        with open(info_path) as f:
            pid = f.read().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid else ""


def worker_names(directory: str) -> list[str]:
    """The workers that have a database (``<worker>.db``) in ``directory``,
    sorted."""
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(
        os.path.join(glob.escape(directory), "*.db")))


def holder_status(db_path: str) -> str:
    """For ``recovery inspect``: who holds the database, without taking it."""
    try:
        fd = os.open(db_path, os.O_RDONLY)
    except OSError:
        return "no database file"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"in use{_holder(db_path + LOCK_SUFFIX) or ' (pid unknown)'}"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(fd)


# -- the manifest -------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    worker: str
    database_id: str
    created_at: str
    application: str

    def to_json(self) -> str:
        body = {"format": 1, "worker": self.worker, "database_id": self.database_id,
                "created_at": self.created_at, "application": self.application}
        body["checksum"] = zlib.crc32(json.dumps(body, sort_keys=True).encode())
        return json.dumps(body, sort_keys=True, indent=1) + "\n"


def new_manifest(worker: str, application: str) -> Manifest:
    return Manifest(worker, uuid.uuid4().hex, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    application)


def read_manifest(db_path: str) -> Manifest | None:
    path = db_path + MANIFEST_SUFFIX
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        body = json.loads(text)
        cs = body.pop("checksum")
        if zlib.crc32(json.dumps(body, sort_keys=True).encode()) != cs:
            raise ValueError("checksum mismatch")
        return Manifest(body["worker"], body["database_id"], body["created_at"],
                        body["application"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptionError(
            f"{path} is damaged ({e}); it records that this directory holds "
            f"worker state, so refusing to guess") from None


def write_manifest(db_path: str, manifest: Manifest) -> None:
    atomic_write(db_path + MANIFEST_SUFFIX, manifest.to_json().encode())


def atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_synced(path: str) -> None:
    """Remove ``path`` (nothing if it is gone) and sync its directory: the
    removal survives a power loss, as ``atomic_write``'s writes do."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_database_file(db_path: str, manifest: Manifest | None) -> None:
    """Before anything opens the database: a directory that has held this
    worker's state must still hold its database."""
    if manifest is None:
        return
    since = f"since {manifest.created_at} (see {db_path + MANIFEST_SUFFIX})"
    remedy = (f"Restore the file, or, to start this worker over and lose its "
              f"state, remove {db_path}* (every file of this worker).")
    try:
        size = os.path.getsize(db_path)
    except FileNotFoundError:
        raise MissingDatabase(
            f"{db_path} is missing, but this directory has held worker "
            f"{manifest.worker!r}'s state {since}; refusing to start fresh. "
            f"{remedy}") from None
    if size == 0:
        raise MissingDatabase(
            f"{db_path} is empty, but this directory has held worker "
            f"{manifest.worker!r}'s state {since}; refusing to start fresh. "
            f"{remedy}")


# -- the position file --------------------------------------------------------

_POSITION = struct.Struct(">8sQQQI")
_MAGIC = b"WLPOS001"


@dataclass(frozen=True)
class Position:
    commits: int
    next_lsn: int
    db_size: int  # the database file's size after the commit


class PositionFile:
    """``<worker>.db.position``: one fixed-size record, rewritten in place
    (one ``pwrite`` per commit; no fsync: see the module docstring)."""

    def __init__(self, db_path: str):
        self.path = db_path + POSITION_SUFFIX
        self.fd: int | None = None

    def read(self) -> Position | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read(_POSITION.size + 1)
        except FileNotFoundError:
            return None
        if len(data) != _POSITION.size:
            raise CorruptionError(
                f"{self.path} is damaged ({len(data)} bytes, not "
                f"{_POSITION.size}); it records the last committed position, "
                f"so refusing to start without it")
        magic, commits, next_lsn, db_size, cs = _POSITION.unpack(data)
        if magic != _MAGIC or zlib.crc32(data[:-4]) != cs:
            raise CorruptionError(
                f"{self.path} failed its checksum; it records the last "
                f"committed position, so refusing to start without it")
        return Position(commits, next_lsn, db_size)

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def write(self, pos: Position) -> None:
        body = _POSITION.pack(_MAGIC, pos.commits, pos.next_lsn, pos.db_size, 0)[:-4]
        os.pwrite(self.fd, body + struct.pack(">I", zlib.crc32(body)), 0)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def check_position(db_path: str, pos: Position | None, manifest: Manifest | None,
                   db_size: int, commits: int, next_lsn: int) -> None:
    """The database must not be behind the last position this worker
    committed (DESIGN.md §4.2, §4.7)."""
    pfile = db_path + POSITION_SUFFIX
    if pos is None:
        if manifest is not None and commits > 0:
            raise MissingDatabase(
                f"{pfile} is missing: it records the last committed position "
                f"of worker {manifest.worker!r}, without which a rolled-back "
                f"database cannot be told from a whole one.  If you know the "
                f"database is whole, run `wallaroo recovery accept-rollback "
                f"{os.path.dirname(db_path) or '.'} --worker {manifest.worker}` "
                f"to record its position again.")
        return
    problems = []
    if db_size < pos.db_size:
        problems.append(f"the file is {db_size} bytes but was {pos.db_size} "
                        f"after the last commit (truncated?)")
    if commits < pos.commits:
        problems.append(f"it holds {commits} commits but {pos.commits} were "
                        f"made (commits {commits + 1}..{pos.commits} are missing)")
    if next_lsn < pos.next_lsn:
        problems.append(f"its input log ends at lsn {next_lsn} but reached "
                        f"{pos.next_lsn} (messages {next_lsn}..{pos.next_lsn - 1} "
                        f"are missing; some were acknowledged to their senders)")
    if problems:
        worker = os.path.basename(db_path)[:-3]
        raise RollbackDetected(
            f"{db_path} is behind this worker's last committed position "
            f"({pfile}): " + "; ".join(problems) + ".  Its -wal file was "
            f"deleted, damaged or replaced, or the database was restored from "
            f"an older copy; running on it would silently lose acknowledged "
            f"input.  Restore the files if you can; to accept the loss and "
            f"run from what the database holds, run `wallaroo recovery "
            f"accept-rollback {os.path.dirname(db_path) or '.'} --worker "
            f"{worker}`.")


# -- the trial write ----------------------------------------------------------

def trial_write(db_path: str, nbytes: int = TRIAL_BYTES) -> None:
    """Allocate ``nbytes`` on the database's file system and free them: a
    restart on a full disk is refused before ``ready`` instead of answering
    RESUME and dying at its first commit."""
    path = db_path + TRIAL_SUFFIX
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.write(fd, bytes(nbytes))  # a file system without fallocate
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = _free_bytes(os.path.dirname(db_path) or ".")
            raise DiskFull(
                f"{os.path.dirname(db_path) or '.'}: no room to write "
                f"({free} bytes free; a trial write of {nbytes} bytes failed "
                f"with {e.strerror}); free some space and start again") from None
        raise StoreError(f"{path}: trial write failed: {e.strerror or e}") from None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _free_bytes(directory: str) -> int:
    try:
        st = os.statvfs(directory)
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1
