"""SQLite's WAL checkpoints off the commit path (recovery/checkpointer.py)."""

from __future__ import annotations

import os
import sqlite3
import time

from wallaroo.recovery import checkpointer
from wallaroo.recovery.checkpointer import Checkpointer


def wal_db(tmp_path, rows=200):
    path = str(tmp_path / "x.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    for _ in range(rows):
        conn.execute("INSERT INTO t VALUES (randomblob(4000))")
    return path, conn


def test_a_reader_does_not_stall_the_commit_paths_restart(tmp_path):
    """A reader holding an old snapshot (``wallaroo status``, a partition
    load) kept SQLite's RESTART waiting for its 5 s busy timeout, inside a
    commit.  Now it returns at once and is retried a second later."""
    path, conn = wal_db(tmp_path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    conn.execute("INSERT INTO t VALUES (1)")
    cp = Checkpointer(path, wal_limit=1000)
    try:
        assert cp.wal_too_big()
        t0 = time.perf_counter()
        assert cp.restart(conn) is False
        assert time.perf_counter() - t0 < 1.0
        assert not cp.wal_too_big()  # not again until RESTART_RETRY has passed
        reader.execute("COMMIT")
        cp._retry_at = 0.0
        assert cp.restart(conn) is True
        conn.execute("INSERT INTO t VALUES (2)")  # the WAL starts over
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames < 10
        assert (cp.restarts, cp.blocked) == (2, 1)
        # the connection's busy timeout is back to sqlite3's default
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == \
            checkpointer.BUSY_TIMEOUT_MS
    finally:
        cp.close()
        reader.close()
        conn.close()


def test_the_thread_restarts_a_wal_past_its_limit_between_commits(tmp_path):
    """Past the limit (here 1 KB: every commit passes it) the thread
    follows its PASSIVE checkpoint with a RESTART, which succeeds between
    two commits, so the WAL stays about one commit long and the commit
    path never has to restart it.  The thread is woken after each commit
    and the writer waits for its round, so nothing depends on scheduling."""
    path, conn = wal_db(tmp_path, rows=0)
    conn.execute("PRAGMA journal_size_limit=65536")  # as the store sets it
    cp = Checkpointer(path, wal_limit=1024)
    largest = 0
    try:
        for _ in range(20):
            conn.execute("BEGIN")
            for _ in range(20):
                conn.execute("INSERT INTO t VALUES (randomblob(4000))")
            conn.execute("COMMIT")
            largest = max(largest, os.path.getsize(path + "-wal"))
            rounds = cp.rounds
            cp.commits += 1
            cp.wake()
            deadline = time.monotonic() + 10
            while cp.rounds == rounds and time.monotonic() < deadline:
                time.sleep(0.001)
        assert cp.background_restarts == 20
        assert cp.failures == 0
        assert largest < 3 * 20 * 4096, largest  # about one commit
    finally:
        cp.close()
        conn.close()


def test_a_restarted_wal_is_written_again_not_cut_back_below_the_journal_limit(tmp_path):
    """After a restart the first commit truncates the WAL file to
    ``journal_size_limit`` if it is larger: freeing tens of megabytes took
    that commit 20 ms, once per ``wal_limit`` of WAL.  The store's limit
    sits above ``wal_limit`` (plus what a round of commits adds), so a WAL
    the thread restarts is written again from its start, and only what a
    burst left beyond the limit is cut back."""
    assert checkpointer.JOURNAL_SIZE_LIMIT >= checkpointer.WAL_LIMIT + (8 << 20)
    for limit, truncated in ((1 << 30, False), (65536, True)):
        d = tmp_path / str(limit)
        d.mkdir()
        path, conn = wal_db(d, rows=0)
        conn.execute(f"PRAGMA journal_size_limit={limit}")
        conn.execute("BEGIN")
        for _ in range(100):  # about 400 KB of WAL
            conn.execute("INSERT INTO t VALUES (randomblob(4000))")
        conn.execute("COMMIT")
        before = os.path.getsize(path + "-wal")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        assert not busy
        conn.execute("INSERT INTO t VALUES (1)")  # the WAL starts over
        after = os.path.getsize(path + "-wal")
        if truncated:
            assert after <= limit < before
        else:
            assert after == before
        conn.close()


def test_a_commit_never_meets_the_threads_restart(tmp_path, monkeypatch):
    """The thread's RESTART holds SQLite's write lock while it copies; a
    commit that met it slept in SQLite's busy handler (1, 2, 5 ms ...),
    longer than the restart ran.  The two take turns on ``gate`` instead:
    here the writer has no busy timeout at all, so one meeting would raise
    "database is locked", and commits come back to back while the thread
    restarts a WAL that is past its limit after every commit."""
    monkeypatch.setattr(checkpointer, "EVERY", 0.0005)
    path, conn = wal_db(tmp_path, rows=0)
    conn.execute("PRAGMA busy_timeout=0")
    cp = Checkpointer(path, wal_limit=1024)
    try:
        deadline = time.monotonic() + 30
        commits = 0
        while cp.background_restarts < 20 and time.monotonic() < deadline:
            with cp.gate:
                conn.execute("BEGIN")
                conn.execute("INSERT INTO t VALUES (randomblob(4000))")
                conn.execute("COMMIT")
            commits += 1
            cp.commits = commits
        assert cp.background_restarts >= 20, (commits, cp.rounds)
        assert cp.failures == 0
    finally:
        cp.close()
        conn.close()
