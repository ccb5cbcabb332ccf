"""Many rows in few statements: the commit path's inserts.

A commit runs in a thread while the event loop computes the next batch.
``executemany`` steps its statement once per row, and SQLite releases the
GIL for each step: the committing thread must take it back after every
row, and with the loop busy that waits for the loop to let go (Python's
switch interval, 1 ms in a worker).  Measured here: 1,000 snapshot rows
took 1.5 ms with the loop idle and 220 ms with it busy.  One ``INSERT ...
VALUES (...), (...), ...`` of up to ``CHUNK`` rows takes the GIL back once
per chunk instead: 6.4 ms with the loop busy.

Chunks are ``CHUNK`` rows, and the rest is split in powers of two, so a
table's inserts use a handful of distinct statements (sqlite3 caches
them compiled) whatever the row counts.
"""

from __future__ import annotations

import sqlite3
from typing import Sequence

CHUNK = 256  # rows per statement (8 columns: 2,048 variables of SQLite's 32,766)


def _sizes(n: int):
    while n >= CHUNK:
        yield CHUNK
        n -= CHUNK
    bit = CHUNK >> 1
    while n:
        if n >= bit:
            yield bit
            n -= bit
        bit >>= 1


def insert(conn: sqlite3.Connection, head: str, rows: Sequence[tuple],
           tail: str = "") -> None:
    """``head`` (``INSERT [OR ...] INTO table [(columns)] VALUES``) for
    every row of ``rows`` (tuples of one length), then ``tail`` (an ``ON
    CONFLICT`` clause) after the values."""
    if not rows:
        return
    one = "(" + ",".join("?" * len(rows[0])) + ")"
    i = 0
    for n in _sizes(len(rows)):
        sql = f"{head} {','.join([one] * n)} {tail}"
        conn.execute(sql, [v for row in rows[i:i + n] for v in row])
        i += n
