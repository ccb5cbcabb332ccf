"""The commit path's multi-row inserts (wallaroo/recovery/bulk.py): every
row lands, in chunks of a few distinct sizes, with an ON CONFLICT tail."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, strategies as st

from wallaroo.recovery import bulk


@given(st.integers(0, 3 * bulk.CHUNK + 77))
def test_every_row_lands_once_in_few_distinct_statements(n):
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b BLOB)")
    sizes = list(bulk._sizes(n))
    assert sum(sizes) == n
    assert set(sizes) <= {bulk.CHUNK} | {1 << i for i in range(bulk.CHUNK.bit_length())}
    rows = [(i, bytes([i % 256]) * (i % 5)) for i in range(n)]
    bulk.insert(conn, "INSERT INTO t VALUES", rows)
    assert conn.execute("SELECT a, b FROM t ORDER BY a").fetchall() == rows


def test_the_tail_takes_an_upsert_clause():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE s (k TEXT PRIMARY KEY, n INTEGER)")
    bulk.insert(conn, "INSERT INTO s VALUES", [("a", 1), ("b", 2)])
    bulk.insert(conn, "INSERT INTO s VALUES", [("a", 5), ("c", 3)],
                tail="ON CONFLICT(k) DO UPDATE SET n=excluded.n")
    assert conn.execute("SELECT * FROM s ORDER BY k").fetchall() == [
        ("a", 5), ("b", 2), ("c", 3)]
    with pytest.raises(sqlite3.IntegrityError):  # without it, a conflict fails
        bulk.insert(conn, "INSERT INTO s VALUES", [("a", 9)])


def test_an_sqlite_that_takes_999_variables_gets_smaller_statements():
    """SQLite before 3.32 takes 999 variables in a statement (32,766 after):
    the chunks shrink to fit instead of failing the commit."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    if not hasattr(conn, "setlimit"):
        pytest.skip("needs Python 3.11 to lower the limit")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    conn.execute("CREATE TABLE w (a, b, c, d, e, f, g, h, i, j)")  # input_log's width
    assert bulk.rows_per_statement(conn, 10) == 64  # 640 variables
    rows = [tuple(range(i, i + 10)) for i in range(1000)]
    bulk.insert(conn, "INSERT INTO w VALUES", rows)
    assert conn.execute("SELECT count(*), sum(a) FROM w").fetchone() == (
        1000, sum(range(1000)))
