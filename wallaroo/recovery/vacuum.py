"""Incremental vacuum while a worker runs: the database file gives back
free pages in small steps instead of staying at its high-water mark.

Deleted rows (the input log below ``replay_from``, delivered outputs,
replaced snapshots) free pages that SQLite reuses, so under steady load the
file plateaus; after a burst the pages stay free in the file.  A database
made with ``auto_vacuum=INCREMENTAL`` (every database this release creates;
``wallaroo recovery compact`` converts older ones) can move its last pages
into free ones and shorten itself: ``PRAGMA incremental_vacuum(N)``, about
13 µs a page.  After a commit, when more than a quarter of the file (and at
least ``KEEP_PAGES``) is free, the commit path runs one step of at most
``STEP_PAGES`` in a transaction of its own (a few milliseconds), so a
burst's pages go back over the following commits; while pages remain to
give back, an idle worker commits empty batches every ``IDLE_TICK``
seconds, each with a step of ``IDLE_STEP_PAGES``.

The position file (``files.py``) records the file's size after each commit,
and a smaller file at the next start is refused as truncated.  A vacuum
step's commit makes the database smaller, but the file itself shrinks
only when a checkpoint has copied that commit into it.  So the size
recorded is never more than the database's size as of the commit
(``page_count``), and the step holds the checkpointer's lock from its
commit until the position file records the smaller size: no checkpoint
can shrink the file in between.
"""

from __future__ import annotations

import sqlite3

KEEP_PAGES = 2048  # free pages always left for reuse (8 MB of 4 KiB pages)
STEP_PAGES = 256  # pages given back per step (1 MB; about 3 ms)
IDLE_STEP_PAGES = 1024  # in a commit without rows (4 MB; about 13 ms)
IDLE_TICK = 0.02  # seconds between an idle worker's vacuum commits
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def enabled(conn: sqlite3.Connection) -> bool:
    (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
    return mode == INCREMENTAL


def page_size(conn: sqlite3.Connection) -> int:
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    return size


def logical_size(conn: sqlite3.Connection, page_bytes: int) -> int:
    """The database's size as of the last commit on ``conn``, in bytes
    (the file is longer until a checkpoint truncates it, or shorter while
    the WAL holds pages it has not copied yet); ``page_bytes``: its page
    size (``page_size``, fixed for a database: read once)."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    return pages * page_bytes


def excess_pages(conn: sqlite3.Connection) -> int:
    """Free pages beyond what is kept for reuse."""
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    if free <= KEEP_PAGES:
        return 0
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    return max(0, free - max(KEEP_PAGES, pages // 4))


def step(conn: sqlite3.Connection, pages: int) -> None:
    """Give back up to ``pages`` free pages, in a transaction of its own.
    (``executescript``: sqlite3's ``execute`` would step the pragma once,
    and each step moves one page.)"""
    conn.executescript(f"PRAGMA incremental_vacuum({int(pages)})")
