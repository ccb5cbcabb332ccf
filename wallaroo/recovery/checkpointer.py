"""SQLite's WAL checkpoints, off the commit path.

By default SQLite checkpoints inside the commit that takes the WAL past
1000 pages: that commit copies the WAL into the database and (with
``synchronous=NORMAL`` or ``FULL``) fsyncs it, a stall of milliseconds that
lands on whichever batch was unlucky.  A worker turns that off
(``wal_autocheckpoint=0``) and a thread of its own, with its own
connection, runs ``wal_checkpoint(PASSIVE)`` when commits have added
enough: it never blocks the committing connection, which goes on appending
to the WAL meanwhile (SQLite releases the GIL while it works).

Checkpoints do not change what is durable: a commit is durable once its
WAL frames are written (NORMAL: against a process crash; FULL: fsynced
too); a checkpoint only moves them into the database file.

A WAL restarts (is written again from its start) only when a writer
begins while every frame has been checkpointed, which a busy writer never
leaves time for: the WAL would grow.  So once it passes ``wal_limit`` the
thread follows its PASSIVE checkpoint with ``wal_checkpoint(RESTART)``:
it has only the frames of the last commit or two left to copy, and it
needs the write lock, which it takes between two commits without waiting
(``busy_timeout`` 0; a commit in flight or a reader holding an old
snapshot makes it give up and try again at the next round).  A commit
that comes meanwhile waits for it: a few milliseconds.  Only past
``HARD_LIMIT_FACTOR`` times ``wal_limit`` (the thread kept failing) does
the commit path restart the WAL itself, again without waiting for readers
(``restart``; retried at most every ``RESTART_RETRY`` seconds).

The WAL file is not truncated after a restart (it is written again from
its start), except past ``JOURNAL_SIZE_LIMIT`` (sqlite_store sets it):
SQLite truncates it in the first commit after the restart, and freeing
tens of megabytes of a file took that commit 20 ms on ext4 (a stall every
64 MB of WAL, the paced benchmark's worst 0.5% of messages, when the
limit was 4 MB under a 64 MB ``wal_limit``).  So the limit sits above
``wal_limit`` plus what a round adds, and only the file a burst left
beyond that is cut back.

How often: a round's fsyncs (the WAL's before copying, the database's
after) slow the commits that run meanwhile on this ext4/virtio machine:
their WAL writes wait (commits overlapping a round took 1.5 ms at the
90th percentile, 0.2 ms otherwise), and at 50,000 msgs/s every round
showed as a burst of messages over 2 ms, 100 ms apart.  A round's time
grows less than the WAL it copies (1.6 ms for 20 ms of commits, 3 ms for
100 ms, 10 ms for 500 ms), so fewer, larger rounds slow fewer commits:
every 0.5 s, commits overlapping a round fell from 164 to 70 per 5 s and
the commit p99 from about 0.47 to 0.31 ms (benchmarks/README.md).  At
full speed the WAL then gathers about half a second of commits, well
under ``wal_limit``.

**The gate.**  A commit that met the thread's RESTART holding the write
lock got ``SQLITE_BUSY`` and slept in SQLite's busy handler, which sleeps
1, 2, 5, 10 ms ... between attempts whatever the lock's holder does: a
restart of 2 ms cost the commit 4 to 8 ms, and at 50,000 msgs/s the WAL
passes ``wal_limit`` every round, so each round made such a commit, the
paced benchmark's worst messages (benchmarks/README.md).  Now the thread's
RESTART and the committing connection's writes (each commit's
transaction, and the merge and vacuum steps after it) take turns on
``gate``, a plain lock: a commit waits exactly as long as the restart runs
and never meets its lock, and the restart never meets a commit in flight
(it fails only for readers).  The thread also runs a second PASSIVE
checkpoint before the RESTART, which copies what commits added during the
first, so the restart (and the commit it holds back) has a commit or two
left to copy, about a millisecond with its fsyncs, instead of 2 to 4.

A checkpoint that copies every frame also truncates the database file to
the size of the last commit, which is smaller after an incremental vacuum
(``sqlite_store``).  The thread holds ``lock`` while it checkpoints, and
the commit path holds it from a vacuum step's commit until the position
file records the smaller size: the file never shrinks below what the
position file says it was.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

# seconds between checkpoints while commits come (see "How often" above);
# the environment variable lets tests keep commits in the WAL (to damage
# it) for as long as they need
EVERY = float(os.environ.get("WALLAROO_WAL_CHECKPOINT_EVERY", 0.5))
WAL_LIMIT = 16 << 20  # bytes: beyond, the thread restarts the WAL
# the WAL file is cut back to this only when a restart finds it larger
JOURNAL_SIZE_LIMIT = 2 * WAL_LIMIT
HARD_LIMIT_FACTOR = 4  # beyond this many times WAL_LIMIT, the commit path does
RESTART_RETRY = 1.0  # seconds between RESTART attempts that readers blocked
BUSY_TIMEOUT_MS = 5000  # the committing connection's (sqlite3's default)

log = logging.getLogger("wallaroo")


class Checkpointer:
    def __init__(self, path: str, wal_limit: int = WAL_LIMIT):
        self.path = path
        self.wal_path = path + "-wal"
        self.wal_limit = wal_limit
        self.commits = 0  # commits so far (the committing thread counts)
        self._wake = threading.Event()
        self.lock = threading.Lock()  # held while checkpointing (see above)
        # held by the committing connection's writes and by the thread's
        # RESTART, so that a commit waits for a restart exactly as
        # long as it runs ("The gate" above)
        self.gate = threading.Lock()
        self._stop = False
        self._conn = sqlite3.connect(path, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=0")
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="wal-checkpoint")
        self.checkpoints = 0
        self.rounds = 0  # rounds done (a checkpoint, and a restart if due)
        self.failures = 0
        self.background_restarts = 0  # WAL restarts the thread managed
        self.restarts = 0  # RESTART checkpoints the commit path ran
        self.blocked = 0  # of them, those a reader kept from restarting the WAL
        self._retry_at = 0.0
        self._thread.start()

    def _wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.wal_path)
        except OSError:
            return 0

    def wal_too_big(self) -> bool:
        """For the commit path: the WAL is past the hard limit (the
        thread could not restart it) and no attempt failed just now."""
        if time.monotonic() < self._retry_at:
            return False
        return self._wal_bytes() > self.wal_limit * HARD_LIMIT_FACTOR

    def restart(self, conn: sqlite3.Connection) -> bool:
        """``wal_checkpoint(RESTART)`` on the committing connection, without
        waiting for readers; False when one kept the WAL from restarting."""
        conn.execute("PRAGMA busy_timeout=0")
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.restarts += 1
        if busy:
            self.blocked += 1
            self._retry_at = time.monotonic() + RESTART_RETRY
        return not busy

    def _run(self) -> None:
        seen = 0
        while not self._stop:
            self._wake.wait(EVERY)
            self._wake.clear()
            if self._stop:
                break
            if self.commits == seen:
                continue
            seen = self.commits
            try:
                with self.lock:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                    if self._wal_bytes() > self.wal_limit:
                        # what commits added during the first pass, so the
                        # RESTART has only a commit or two left to copy
                        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        with self.gate:
                            busy, _, _ = self._conn.execute(
                                "PRAGMA wal_checkpoint(RESTART)").fetchone()
                        if not busy:
                            self.background_restarts += 1
            except sqlite3.OperationalError as e:  # a writer held the lock
                log.debug("%s: background WAL restart deferred: %s", self.path, e)
            except sqlite3.Error as e:  # the commit path reports disk trouble
                self.failures += 1
                log.debug("%s: background checkpoint failed: %s", self.path, e)
            self.rounds += 1

    def wake(self) -> None:
        """Run a round now instead of at the next tick."""
        self._wake.set()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._conn.close()
