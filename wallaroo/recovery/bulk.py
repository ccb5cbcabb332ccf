"""Many rows in few statements: the commit path's inserts.

A commit runs in a thread while the event loop computes the next batch.
``executemany`` steps its statement once per row, and SQLite releases the
GIL for each step: the committing thread must take it back after every
row, and with the loop busy that waits for the loop to let go (Python's
switch interval, 1 ms in a worker).  Measured here: 1,000 snapshot rows
took 1.5 ms with the loop idle and 220 ms with it busy.  One ``INSERT ...
VALUES (...), (...), ...`` of up to ``CHUNK`` rows takes the GIL back once
per chunk instead: 6.4 ms with the loop busy.

Chunks are ``CHUNK`` rows (fewer when the SQLite in use takes fewer
variables in one statement: 999 before SQLite 3.32), and the rest is split
in powers of two, so a table's inserts use a handful of distinct
statements (sqlite3 caches them compiled) whatever the row counts.
"""

from __future__ import annotations

import sqlite3
from typing import Sequence

CHUNK = 256  # rows per statement at most (10 columns: 2,560 variables)
OLD_VARIABLE_LIMIT = 999  # SQLite before 3.32; Python before 3.11 cannot ask


def rows_per_statement(conn: sqlite3.Connection, columns: int) -> int:
    """The largest power of two up to CHUNK whose rows' variables this
    connection takes in one statement."""
    getlimit = getattr(conn, "getlimit", None)
    limit = (getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit
             else OLD_VARIABLE_LIMIT)
    per = CHUNK
    while per > 1 and per * columns > limit:
        per >>= 1
    return per


def _sizes(n: int, per: int = CHUNK):
    while n >= per:
        yield per
        n -= per
    bit = per >> 1
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
    columns = len(rows[0])
    one = "(" + ",".join("?" * columns) + ")"
    i = 0
    for n in _sizes(len(rows), rows_per_statement(conn, columns)):
        sql = f"{head} {','.join([one] * n)} {tail}"
        conn.execute(sql, [v for row in rows[i:i + n] for v in row])
        i += n
