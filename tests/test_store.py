"""Unit tests of the durable store, SQLiteStore (DESIGN.md §4).

Opening (files, modes, lock), atomic commits and what a reopen shows, the
backlog iterators (input-log truncation at ``replay_from``, outbox deletion at
the delivery position), checksums against bytes flipped directly in the
SQLite file, the worker lock (in-process, another process, a SIGKILLed
process), application fingerprints and the plain schema.

The random side of the same promises is tests/test_store_model.py; its
``Model`` is reused here as the reference for the SIGKILL test.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import sqlite3
import stat
import subprocess
import sys

import pytest
import sqlite_utils

from wallaroo.recovery import (CommitRecord, CorruptionError,
                               IncompatibleDirectory, InputRow, OutputRow,
                               PartitionRow, Recovered, SnapshotRow,
                               StoreError, StoreLocked)
from wallaroo.recovery import schema
from wallaroo.recovery.sqlite_store import SQLiteStore

from .test_store_model import Model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = "initializer"


def fingerprint(**states) -> dict:
    """The fingerprint ``AppSpec.fingerprint()`` builds, for an application
    with states "counts" and "totals" and two sinks."""
    fp = {
        "application": "word-count",
        "states": {
            "counts": {"class": "app.Counts", "partitioning": "keyed",
                       "partition_function": "app.by_word",
                       "declared_keys": ["'a'", "'b'"]},
            "totals": {"class": "app.Total", "partitioning": "single",
                       "partition_function": None, "declared_keys": []},
        },
        "pipelines": ["words"],
        "sinks": 2,
    }
    fp["states"].update(states)
    return fp


FP = fingerprint()


def key_row(pid: int, state: str, key, created: int) -> PartitionRow:
    return PartitionRow(pid, state, pickle.dumps(key, 5), repr(key), created)


def sample_records() -> list[CommitRecord]:
    """Two batches of a word-count worker, with every kind of row."""
    first = CommitRecord(
        inputs=[InputRow(0, "words", "client-1", 0, 3,
                         b"\x00\x00\x00\x03foo\x00\x00\x00\x03bar\x00\x00\x00\x01!",
                         (2,)),
                InputRow(3, "words", None, None, 2, b"\x00\x00\x00\x01a\x00\x00\x00\x00")],
        outputs=[OutputRow(1, 0, 1, b"total 1\n"),
                 OutputRow(0, 0, 4, b"foo=1\nbar=1\na=1\n\x00\xff")],
        partitions=[key_row(1, "counts", "foo", 0), key_row(2, "counts", "bar", 1),
                    key_row(3, "totals", None, 0)],
        snapshots=[SnapshotRow(1, 4, pickle.dumps({"n": 1}), "pickle")],
        streams={("words", "client-1"): 3},
        delivered={},
        next_out_seq={0: 4, 1: 1},
        next_lsn=5, replay_from=0)
    second = CommitRecord(
        inputs=[InputRow(5, "words", "client-1", 3, 1, b"\x00\x00\x00\x03foo")],
        outputs=[OutputRow(0, 4, 1, b"foo=2\n")],
        partitions=[key_row(4, "counts", ("tuple", 1), 5)],
        snapshots=[SnapshotRow(1, 5, pickle.dumps({"n": 2}), "cloudpickle"),
                   SnapshotRow(3, 5, b"\x80\x05N.", "pickle")],
        streams={("words", "client-1"): 4, ("words", "client-2"): 0},
        delivered={0: 4, 1: 0},
        next_out_seq={0: 5},
        next_lsn=6, replay_from=3)
    return [first, second]


def model_of(*records: CommitRecord) -> Model:
    m = Model()
    for r in records:
        m.apply(r)
    return m


@pytest.fixture
def res_dir(tmp_path):
    return str(tmp_path / "resilience")


@contextlib.contextmanager
def opened(directory: str, fp: dict = FP, worker: str = WORKER, **kw):
    store = SQLiteStore(directory, worker, **kw)
    rec = store.open(fp)
    try:
        yield store, rec
    finally:
        store.close()


@contextlib.contextmanager
def raw(path: str):
    """A plain sqlite3 connection, bypassing the store."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def db(directory: str, worker: str = WORKER) -> str:
    return os.path.join(directory, f"{worker}.db")


def commit_all(directory: str, records, fp: dict = FP) -> None:
    with opened(directory, fp) as (store, _):
        for r in records:
            store.commit(r)


def contents(store: SQLiteStore) -> tuple[list, list]:
    return list(store.replay_inputs(0)), list(store.undelivered_outputs({}))


def assert_matches(store: SQLiteStore, rec: Recovered, m: Model) -> None:
    assert rec == m.recovered()
    assert store.all_partitions() == m.stored_partitions()
    assert contents(store) == (m.replay(0), m.undelivered({}))


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- opening -------------------------------------------------------------


@pytest.fixture
def no_umask():
    """Create files with no umask help: the store must set its own modes."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_open_new_directory_is_fresh_and_private(tmp_path, no_umask):
    directory = str(tmp_path / "res")
    with opened(directory) as (store, rec):
        assert rec == Recovered(fresh=True)
        assert rec.fresh and rec.commits == 0
        assert contents(store) == ([], [])
        assert store.path == db(directory)
        assert mode(directory) == 0o700
        names = sorted(os.listdir(directory))
        assert names == [f"{WORKER}.db", f"{WORKER}.db-shm", f"{WORKER}.db-wal",
                         f"{WORKER}.db.lock", f"{WORKER}.db.manifest",
                         f"{WORKER}.db.position"]
        for name in names:
            assert mode(os.path.join(directory, name)) == 0o600, name
        with open(db(directory) + ".lock") as f:
            assert f.read().strip() == str(os.getpid())


def test_open_twice_with_nothing_committed_is_still_fresh(res_dir):
    with opened(res_dir):
        pass
    with opened(res_dir) as (store, rec):
        assert rec == Recovered(fresh=True)


# -- commits and what a reopen shows ---------------------------------------


def test_commits_survive_close_and_reopen(res_dir):
    records = sample_records()
    with opened(res_dir) as (store, _):
        store.commit(records[0])
        assert contents(store) == (model_of(records[0]).replay(0),
                                   model_of(records[0]).undelivered({}))
        store.commit(records[1])
    m = model_of(*records)
    with opened(res_dir) as (store, rec):
        assert_matches(store, rec, m)
        assert not rec.fresh and rec.commits == 2
        assert rec.next_lsn == 6 and rec.replay_from == 3
        assert rec.delivered == {0: 4, 1: 0} and rec.next_out_seq == {0: 5, 1: 1}
        assert rec.streams == {("words", "client-1"): 4, ("words", "client-2"): 0}
        partitions, snaps = store.all_partitions()
        assert rec.partitions_on_disk == 5  # pids 0..4, never reused
        assert [p.pid for p in partitions] == [1, 2, 3, 4]
        assert pickle.loads(partitions[3].key) == ("tuple", 1)
        assert partitions[3].key_repr == "('tuple', 1)"
        assert snaps[1] == SnapshotRow(1, 5, pickle.dumps({"n": 2}), "cloudpickle")
        assert set(snaps) == {1, 3}
        # rows entirely below replay_from=3 went, the outbox of sink 0 is
        # delivered up to 4, sink 1 not at all
        assert [r.first_lsn for r in store.replay_inputs(0)] == [3, 5]
        assert [(o.sink, o.first_seq) for o in store.undelivered_outputs({})] == [
            (0, 4), (1, 0)]


class DiesAtCommit:
    """A connection that runs every statement of a commit and then, at
    COMMIT, behaves as if the process died: nothing more reaches SQLite."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.dead = False

    def execute(self, sql, *args):
        if self.dead or sql.strip().upper() == "COMMIT":
            self.dead = True
            raise sqlite3.OperationalError("the process died")
        return self.conn.execute(sql, *args)

    def executemany(self, sql, *args):
        if self.dead:
            raise sqlite3.OperationalError("the process died")
        return self.conn.executemany(sql, *args)

    def close(self):
        self.conn.close()  # a dying process: the open transaction is lost


def test_closing_the_connection_without_commit_keeps_only_what_committed(res_dir):
    first, second = sample_records()
    store = SQLiteStore(res_dir, WORKER)
    store.open(FP)
    try:
        store.commit(first)
        store._conn = DiesAtCommit(store._conn)
        with pytest.raises(sqlite3.OperationalError, match="died"):
            store.commit(second)
    finally:
        store.close()
    with opened(res_dir) as (store, rec):
        assert_matches(store, rec, model_of(first))


def read_image(path: str) -> dict[str, bytes]:
    """The files a SIGKILL at this instant would leave: the database, its
    WAL and the position file beside it."""
    out = {}
    for suffix in ("", "-wal", ".position"):
        if os.path.exists(path + suffix):
            with open(path + suffix, "rb") as f:
                out[suffix] = f.read()
    return out


def write_image(path: str, image: dict[str, bytes]) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    for suffix, data in image.items():
        with open(path + suffix, "wb") as f:
            f.write(data)


def test_a_crash_inside_a_commit_leaves_the_previous_commit(res_dir):
    """The files as a SIGKILL leaves them just before COMMIT, with the
    uncommitted pages of a big transaction already spilled into the WAL,
    recover to the previous commit: a commit is all or nothing."""
    records = sample_records()
    big = CommitRecord(
        inputs=[InputRow(6 + i, "words", None, None, 1, bytes([i]) * 50_000)
                for i in range(20)],
        outputs=[OutputRow(1, 1, 1, b"x" * 100_000)],
        partitions=[key_row(5, "counts", "big", 6)],
        snapshots=[SnapshotRow(2, 20, b"s" * 30_000)],
        delivered={1: 1}, next_out_seq={1: 2}, next_lsn=26, replay_from=6)
    images = {}
    store = SQLiteStore(res_dir, WORKER)
    store.open(FP)
    try:
        for r in records:
            store.commit(r)
        before = read_image(store.path)
        conn = store._conn
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA cache_size=10")  # spill dirty pages early

        def trace(sql):
            if sql.strip().upper() == "COMMIT" and "image" not in images:
                images["image"] = read_image(store.path)
        conn.set_trace_callback(trace)
        store.commit(big)
        conn.set_trace_callback(None)
    finally:
        store.close()
    image = images["image"]
    # the test means something only if uncommitted frames reached the WAL
    assert len(image["-wal"]) > len(before["-wal"])
    with opened(res_dir) as (store, rec):
        assert_matches(store, rec, model_of(*records, big))
    write_image(db(res_dir), image)
    with opened(res_dir) as (store, rec):
        assert_matches(store, rec, model_of(*records))


def test_a_failed_commit_changes_nothing(res_dir):
    first, second = sample_records()
    bad = CommitRecord(
        inputs=second.inputs, outputs=second.outputs,
        partitions=second.partitions + [key_row(1, "counts", "dup", 5)],
        snapshots=second.snapshots, streams=second.streams,
        delivered=second.delivered, next_out_seq=second.next_out_seq,
        next_lsn=second.next_lsn, replay_from=second.replay_from)
    with opened(res_dir) as (store, _):
        store.commit(first)
        with pytest.raises(sqlite3.IntegrityError):
            store.commit(bad)  # pid 1 exists already
        assert contents(store) == (model_of(first).replay(0),
                                   model_of(first).undelivered({}))
    with opened(res_dir) as (store, rec):
        assert_matches(store, rec, model_of(first))
        # the same record without the duplicate commits
        store.commit(second)
        m = model_of(first, second)
        assert contents(store) == (m.replay(0), m.undelivered({}))


def test_a_failed_commit_in_the_same_session_does_not_advance_positions(res_dir):
    first, second = sample_records()
    bad = CommitRecord(
        outputs=[], partitions=[key_row(1, "counts", "dup", 5)],
        delivered={0: 4}, next_lsn=5, replay_from=3)
    with opened(res_dir) as (store, _):
        store.commit(first)
        with pytest.raises(sqlite3.IntegrityError):
            store.commit(bad)
        store.commit(second)
        m = model_of(first, second)
        assert contents(store) == (m.replay(0), m.undelivered({}))
    with opened(res_dir) as (store, rec):
        assert_matches(store, rec, m)


def test_commit_on_a_closed_store_is_refused(res_dir):
    store = SQLiteStore(res_dir, WORKER)
    store.open(FP)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.commit(sample_records()[0])
    store.close()  # closing twice is harmless


def test_a_delivery_only_commit_keeps_the_sinks_next_sequence(res_dir):
    """The runtime sends next_out_seq only for sinks with new outputs; a
    commit that only advances a delivery position keeps the sink's
    next_out_seq, also right after a reopen."""
    first = sample_records()[0]
    commit_all(res_dir, [first])
    only = CommitRecord(delivered={0: 2, 1: 1}, next_lsn=5, replay_from=0)
    commit_all(res_dir, [only])
    with opened(res_dir) as (store, rec):
        assert rec.next_out_seq == {0: 4, 1: 1}
        assert rec.delivered == {0: 2, 1: 1}
        assert_matches(store, rec, model_of(first, only))


# -- replay_inputs ---------------------------------------------------------


def rows(*spans, **kw) -> list[InputRow]:
    return [InputRow(a, "src", None, None, n, f"{a}:{n}".encode(), **kw)
            for a, n in spans]


def stored_input_lsns(path: str) -> list[tuple[int, int]]:
    with raw(path) as conn:
        return conn.execute(
            "SELECT first_lsn, count FROM input_log ORDER BY first_lsn").fetchall()


def test_input_rows_below_replay_from_are_not_written(res_dir):
    with opened(res_dir) as (store, _):
        store.commit(CommitRecord(inputs=rows((0, 3), (3, 2), (5, 4), (9, 1)),
                                  next_lsn=10, replay_from=5))
        # (0,3) and (3,2) end at or below 5: not written; (5,4) is kept
        assert [(r.first_lsn, r.count) for r in store.replay_inputs(0)] == [
            (5, 4), (9, 1)]
        store.commit(CommitRecord(inputs=rows((10, 4)), next_lsn=14,
                                  replay_from=12))
        # a row straddling replay_from is written whole
        assert [(r.first_lsn, r.count) for r in store.replay_inputs(0)] == [
            (10, 4)]
    assert stored_input_lsns(db(res_dir)) == [(10, 4)]


def test_input_rows_are_deleted_when_replay_from_advances(res_dir):
    with opened(res_dir) as (store, _):
        store.commit(CommitRecord(inputs=rows((0, 2), (2, 3), (5, 1), (6, 4)),
                                  next_lsn=10, replay_from=0))
        assert len(stored_input_lsns(store.path)) == 4
        store.commit(CommitRecord(next_lsn=10, replay_from=0))
        assert len(stored_input_lsns(store.path)) == 4
        store.commit(CommitRecord(next_lsn=10, replay_from=5))
        assert stored_input_lsns(store.path) == [(5, 1), (6, 4)]
        store.commit(CommitRecord(next_lsn=10, replay_from=7))
        assert stored_input_lsns(store.path) == [(6, 4)]  # 6..9 straddles 7
        store.commit(CommitRecord(next_lsn=10, replay_from=10))
        assert stored_input_lsns(store.path) == []
    with opened(res_dir) as (store, rec):
        assert rec.replay_from == 10 and list(store.replay_inputs(0)) == []


def test_replay_inputs_from_an_lsn(res_dir):
    commit_all(res_dir, [CommitRecord(inputs=rows((0, 2), (2, 3), (5, 1), (8, 2)),
                                      next_lsn=10)])
    with opened(res_dir) as (store, _):
        def firsts(lsn):
            return [r.first_lsn for r in store.replay_inputs(lsn)]
        assert firsts(0) == [0, 2, 5, 8]
        assert firsts(1) == [0, 2, 5, 8]  # (0,2) covers lsn 1
        assert firsts(2) == [2, 5, 8]  # ends at 2: absorbed
        assert firsts(4) == [2, 5, 8]
        assert firsts(5) == [5, 8]
        assert firsts(6) == [8]  # 6 and 7 are a gap
        assert firsts(9) == [8]
        assert firsts(10) == []


def test_replay_inputs_is_in_lsn_order_and_keeps_every_field(res_dir):
    inputs = [
        InputRow(7, "nümbers", "s:2", 10, 2, b"\x00\x00\x00\x00" * 2, (0, 1)),
        InputRow(0, "words", "client.1-a", 0, 4, bytes(range(256)), (3,)),
        InputRow(4, "words", None, None, 3, b"", ()),
        InputRow(9, "", "x" * 255, 2**40, 1, b"\xff" * 1000, ()),
    ]
    commit_all(res_dir, [CommitRecord(inputs=inputs[:2]),
                         CommitRecord(inputs=inputs[2:], next_lsn=10)])
    with opened(res_dir) as (store, _):
        got = list(store.replay_inputs(0))
    assert got == sorted(inputs, key=lambda r: r.first_lsn)
    assert [type(r.failed) for r in got] == [tuple] * 4
    assert got[0].frames == bytes(range(256))


# -- undelivered_outputs ---------------------------------------------------


def outs(sink, *spans) -> list[OutputRow]:
    return [OutputRow(sink, a, n, f"{sink}/{a}/{n}\n".encode() * n)
            for a, n in spans]


def stored_outbox(path: str) -> list[tuple[int, int, int]]:
    with raw(path) as conn:
        return conn.execute("SELECT sink, first_seq, count FROM outbox "
                            "ORDER BY sink, first_seq").fetchall()


def test_undelivered_outputs_are_ordered_by_sink_then_sequence(res_dir):
    commit_all(res_dir, [
        CommitRecord(outputs=outs(1, (0, 2)) + outs(0, (0, 3)),
                     next_out_seq={0: 3, 1: 2}),
        CommitRecord(outputs=outs(1, (2, 1)) + outs(0, (3, 1), (4, 2)),
                     next_out_seq={0: 6, 1: 3}),
    ])
    with opened(res_dir) as (store, rec):
        got = list(store.undelivered_outputs(rec.delivered))
    assert [(o.sink, o.first_seq, o.count) for o in got] == [
        (0, 0, 3), (0, 3, 1), (0, 4, 2), (1, 0, 2), (1, 2, 1)]
    assert [o.data for o in got] == [o.data for o in sorted(
        outs(0, (0, 3), (3, 1), (4, 2)) + outs(1, (0, 2), (2, 1)),
        key=lambda o: (o.sink, o.first_seq))]


def test_undelivered_outputs_after_a_position(res_dir):
    commit_all(res_dir, [CommitRecord(outputs=outs(0, (0, 3), (3, 2))
                                      + outs(1, (0, 1)),
                                      next_out_seq={0: 5, 1: 1})])
    with opened(res_dir) as (store, _):
        def seqs(delivered):
            return [(o.sink, o.first_seq)
                    for o in store.undelivered_outputs(delivered)]
        assert seqs({}) == [(0, 0), (0, 3), (1, 0)]
        assert seqs({0: 2}) == [(0, 0), (0, 3), (1, 0)]  # 0..2 partly sent
        assert seqs({0: 3}) == [(0, 3), (1, 0)]
        assert seqs({0: 5, 1: 0}) == [(1, 0)]
        assert seqs({0: 5, 1: 1}) == []
        assert seqs({7: 100}) == [(0, 0), (0, 3), (1, 0)]


def test_outbox_rows_are_deleted_when_delivery_passes_them(res_dir):
    with opened(res_dir) as (store, _):
        store.commit(CommitRecord(outputs=outs(0, (0, 3), (3, 2), (5, 1))
                                  + outs(1, (0, 4)),
                                  next_out_seq={0: 6, 1: 4}))
        store.commit(CommitRecord(delivered={0: 4, 1: 0}))
        assert stored_outbox(store.path) == [(0, 3, 2), (0, 5, 1), (1, 0, 4)]
        store.commit(CommitRecord(delivered={0: 5}))
        assert stored_outbox(store.path) == [(0, 5, 1), (1, 0, 4)]
        # new outputs and a delivery position past them in one commit
        store.commit(CommitRecord(outputs=outs(1, (4, 2)), delivered={1: 6},
                                  next_out_seq={1: 6}))
        assert stored_outbox(store.path) == [(0, 5, 1)]
    with opened(res_dir) as (store, rec):
        assert rec.delivered == {0: 5, 1: 6}
        assert rec.next_out_seq == {0: 6, 1: 6}
        assert [(o.sink, o.first_seq) for o in
                store.undelivered_outputs(rec.delivered)] == [(0, 5)]


# -- checksums -------------------------------------------------------------


def flip(blob: bytes, i: int = -1) -> bytes:
    b = bytearray(blob)
    b[i] ^= 0x10
    return bytes(b)


def corrupt(path: str, sql: str, *args) -> None:
    with raw(path) as conn:
        cur = conn.execute(sql, args)
        assert cur.rowcount == 1, sql


@pytest.fixture
def filled(res_dir):
    """A directory holding sample_records()[0] (nothing truncated)."""
    commit_all(res_dir, sample_records()[:1])
    return res_dir


def expect_corrupt_open(directory: str, *needles: str) -> str:
    store = SQLiteStore(directory, WORKER)
    with pytest.raises(CorruptionError) as err:
        store.open(FP)
    msg = str(err.value)
    for n in (db(directory),) + needles:
        assert n in msg, (n, msg)
    return msg


def expect_corrupt_partitions(directory: str, *needles: str) -> str:
    """Partitions are read when a worker needs them, not at open: the
    damage is reported by every way of reading them (the scrub, a full
    read), each naming the file and the partition."""
    msgs = []
    with opened(directory) as (store, _):
        for read in (lambda: store.scrubber()(-1, 1000), store.all_partitions):
            try:
                read()
            except CorruptionError as e:
                msgs.append(str(e))
            else:
                raise AssertionError("a damaged partition was read as sound")
    for msg in msgs:
        for n in (db(directory),) + needles:
            assert n in msg, (n, msg)
    return msgs[0]


@pytest.mark.parametrize("byte", [0, 5, -1])
def test_a_flipped_byte_in_a_snapshot_is_detected_when_read(filled, byte):
    with raw(db(filled)) as conn:
        (blob,) = conn.execute("SELECT state FROM snapshots WHERE pid=1").fetchone()
    corrupt(db(filled), "UPDATE snapshots SET state=? WHERE pid=1", flip(blob, byte))
    msg = expect_corrupt_partitions(filled, "snapshot", "partition 1 ", "'counts'",
                                    "'foo'", "lsn 4")
    # the lock was released: trying again reports the same, not StoreLocked
    assert expect_corrupt_partitions(filled) == msg


def test_a_flipped_byte_in_a_partition_key_is_detected_when_read(filled):
    with raw(db(filled)) as conn:
        (key,) = conn.execute("SELECT key FROM partitions WHERE pid=2").fetchone()
    corrupt(db(filled), "UPDATE partitions SET key=? WHERE pid=2", flip(key))
    expect_corrupt_partitions(filled, "key of partition 2 ", "'counts'", "'bar'")


@pytest.mark.parametrize("sql", [
    "UPDATE snapshots SET lsn=lsn+1 WHERE pid=1",
    "UPDATE partitions SET created_lsn=created_lsn+1 WHERE pid=1",
    "UPDATE partitions SET key_hash=7 WHERE pid=1",
])
def test_a_changed_position_of_a_snapshot_or_key_is_detected(filled, sql):
    corrupt(db(filled), sql)
    expect_corrupt_partitions(filled, "partition 1 ")


def test_the_file_sqlite_cannot_read_is_reported_as_corruption(res_dir):
    commit_all(res_dir, sample_records())
    with open(db(res_dir), "r+b") as f:
        f.write(b"this is not an SQLite database")
    expect_corrupt_open(res_dir, "cannot read")


def read_error(store, what: str) -> str:
    """Read the whole backlog; the CorruptionError's message (not kept as
    pytest.raises would: a live traceback keeps the cursor, and with it the
    connection, open past close())."""
    try:
        if what == "inputs":
            list(store.replay_inputs(0))
        else:
            list(store.undelivered_outputs({}))
    except CorruptionError as e:
        return str(e)
    raise AssertionError(f"damaged {what} were served")


@pytest.mark.parametrize("sql, lsn", [
    ("UPDATE input_log SET frames=? WHERE first_lsn=0", 0),
    ("UPDATE input_log SET frames=? WHERE first_lsn=3", 3),
])
def test_a_flipped_byte_in_input_frames_is_detected_on_replay(filled, sql, lsn):
    with raw(db(filled)) as conn:
        (frames,) = conn.execute("SELECT frames FROM input_log WHERE first_lsn=?",
                                 (lsn,)).fetchone()
    corrupt(db(filled), sql, flip(frames, 1))
    with opened(filled) as (store, _):  # the backlog is checked as it is read
        msg = read_error(store, "inputs")
        assert db(filled) in msg and f"at lsn {lsn} " in msg
        # rows before the damaged one were not the problem
        if lsn == 3:
            assert next(iter(store.replay_inputs(0))).first_lsn == 0


@pytest.mark.parametrize("sql", [
    "UPDATE input_log SET count=count+1 WHERE first_lsn=3",
    "UPDATE input_log SET first_lsn=4 WHERE first_lsn=3",
])
def test_a_changed_position_of_an_input_row_is_detected(filled, sql):
    corrupt(db(filled), sql)
    with opened(filled) as (store, _):
        assert db(filled) in read_error(store, "inputs")


@pytest.mark.parametrize("sink, seq", [(0, 0), (1, 0)])
def test_a_flipped_byte_in_an_outbox_row_is_detected(filled, sink, seq):
    with raw(db(filled)) as conn:
        (data,) = conn.execute("SELECT data FROM outbox WHERE sink=? AND "
                               "first_seq=?", (sink, seq)).fetchone()
    corrupt(db(filled), "UPDATE outbox SET data=? WHERE sink=? AND first_seq=?",
            flip(data, 0), sink, seq)
    with opened(filled) as (store, _):
        msg = read_error(store, "outputs")
        assert db(filled) in msg
        assert f"sink {sink} at output {seq} " in msg


@pytest.mark.parametrize("sql", [
    "UPDATE outbox SET count=count-1 WHERE sink=0",
    "UPDATE outbox SET first_seq=1 WHERE sink=0",
])
def test_a_changed_position_of_an_outbox_row_is_detected(filled, sql):
    corrupt(db(filled), sql)
    with opened(filled) as (store, _):
        assert "sink 0 " in read_error(store, "outputs")


def test_a_snapshot_whose_pid_was_damaged_is_detected(filled):
    corrupt(db(filled), "UPDATE snapshots SET pid=pid+1000 WHERE pid=1")
    expect_corrupt_partitions(filled, "partition")


@pytest.mark.parametrize("table, col, where, read", [
    ("snapshots", "state", "pid=1", "open"),
    ("partitions", "key", "pid=1", "open"),
    ("input_log", "frames", "first_lsn=0", "inputs"),
    ("outbox", "data", "sink=0", "outputs"),
])
def test_a_blob_turned_to_text_is_reported_as_corruption(filled, table, col,
                                                         where, read):
    corrupt(db(filled), f"UPDATE {table} SET {col}=CAST({col} AS TEXT) "
            f"WHERE {where}")
    if read == "open":
        expect_corrupt_partitions(filled, "partition 1 ")
    else:
        store = SQLiteStore(filled, WORKER)
        store.open(FP)
        try:
            try:
                read_error(store, read)
            except Exception as e:  # report the wrong type as a plain failure
                raise AssertionError(f"{type(e).__name__}: {e}") from None
        finally:
            store.close()


@pytest.mark.parametrize("sql, read", [
    ("UPDATE input_log SET failed='' WHERE first_lsn=0", "inputs"),
    ("UPDATE input_log SET source='other' WHERE first_lsn=0", "inputs"),
    ("UPDATE outbox SET sink=3 WHERE sink=1", "outputs"),  # bit 1 flipped
    ("UPDATE partitions SET state='totals' WHERE pid=1", "open"),
])
def test_damaged_row_metadata_is_detected(filled, sql, read):
    corrupt(db(filled), sql)
    if read == "open":
        expect_corrupt_partitions(filled, "partition 1 ")
    else:
        with opened(filled) as (store, _):
            read_error(store, read)


def test_sinks_are_known_by_identity_not_by_place(filled):
    """A sink added is new; the sinks' outputs and positions follow their
    identities when the application lists them in another order."""
    from wallaroo.recovery.sink_identities import OrphanedOutputs
    fp = {**FP, "sinks": 3, "sink_identities": [["", 1], ["new", 0], ["", 0]]}
    with opened(filled, fp) as (store, rec):
        assert rec.next_out_seq == {0: 1, 2: 4}  # by identity, in the new order
        outs = list(store.undelivered_outputs({}))
        assert {(o.sink, o.data) for o in outs} == {
            (0, b"total 1\n"), (2, b"foo=1\nbar=1\na=1\n\x00\xff")}
    # dropping a sink that holds undelivered outputs is refused, naming it
    fp = {**FP, "sinks": 1, "sink_identities": [["", 0]]}
    with pytest.raises(OrphanedOutputs) as err:
        SQLiteStore(filled, WORKER).open(fp)
    msg = str(err.value)
    assert "sink 1 of pipeline ''" in msg and "1 undelivered outputs" in msg
    assert f"wallaroo recovery discard-outputs {filled} --worker {WORKER} " \
           f"--sink ':1'" in msg
    from wallaroo.recovery.sqlite_store import discard_outputs
    assert discard_outputs(filled, WORKER, ":1") == ("sink 1 of pipeline ''", 1)
    with opened(filled, fp) as (store, rec):
        assert [o.sink for o in store.undelivered_outputs({})] == [0]


# -- the worker lock -------------------------------------------------------

CHILD = r"""
import json, sys
from wallaroo.recovery.sqlite_store import SQLiteStore
directory, worker, fp, mode = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
store = SQLiteStore(directory, worker)
store.open(fp)
if mode == "hold":
    from tests.test_store import sample_records
    store.commit(sample_records()[0])
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin or kills us
    store.close()
elif mode == "commit-forever":
    from tests.test_store import numbered_record
    i = 0
    while True:
        store.commit(numbered_record(i))
        print(i, flush=True)  # "acknowledged": printed after commit returned
        i += 1
"""


def child(directory: str, mode: str, fp: dict = FP) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, directory, WORKER, json.dumps(fp), mode],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": REPO})
    return proc


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"child failed: {line!r} {proc.stderr.read()}")


def test_a_second_store_in_the_same_process_is_locked_out(res_dir):
    with opened(res_dir):
        other = SQLiteStore(res_dir, WORKER)
        with pytest.raises(StoreLocked) as err:
            other.open(FP)
        assert db(res_dir) + " is held by another process" in str(err.value)
        assert f"pid {os.getpid()}" in str(err.value)
        # another worker name in the same directory is another database
        with opened(res_dir, worker="worker-2") as (_, rec):
            assert rec.fresh
    with opened(res_dir) as (_, rec):  # after close() it opens fine
        assert rec.fresh


def test_a_store_held_by_another_process_is_locked_out(res_dir):
    proc = child(res_dir, "hold")
    try:
        wait_ready(proc)
        with pytest.raises(StoreLocked, match=f"pid {proc.pid}"):
            SQLiteStore(res_dir, WORKER).open(FP)
    finally:
        proc.stdin.close()  # the child closes the store and exits
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    with opened(res_dir) as (store, rec):
        assert_matches(store, rec, model_of(sample_records()[0]))


def test_a_lock_held_by_a_sigkilled_process_does_not_block(res_dir):
    proc = child(res_dir, "hold")
    try:
        wait_ready(proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    with open(db(res_dir) + ".lock") as f:
        assert f.read().strip() == str(proc.pid)  # the file is still there
    with opened(res_dir) as (store, rec):
        assert_matches(store, rec, model_of(sample_records()[0]))


def numbered_record(i: int) -> CommitRecord:
    """The i-th record of the SIGKILL test: every kind of row, positions
    that move, truncation and deletion as it goes."""
    return CommitRecord(
        inputs=[InputRow(2 * i, "src", "s", 2 * i, 2, f"frames {i}".encode() * 20,
                         (i % 2,) if i % 3 == 0 else ())],
        outputs=[OutputRow(i % 2, i // 2, 1, f"out {i}\n".encode())],
        partitions=[key_row(i, "counts", f"k{i}", 2 * i)] if i % 4 == 0 else [],
        snapshots=[SnapshotRow(i - i % 4, 2 * i + 1, f"state {i}".encode())],
        streams={("src", "s"): 2 * i + 2},
        delivered={i % 2: max(0, i // 2 - 3)},
        next_out_seq={i % 2: i // 2 + 1},
        next_lsn=2 * i + 2, replay_from=2 * (i // 3))


@pytest.mark.parametrize("acked", [1, 40, 300])
def test_sigkill_while_committing_loses_nothing_acknowledged(res_dir, acked):
    """A real process commits as fast as it can and is SIGKILLed: the
    directory then holds exactly the first n records, n >= the number it
    acknowledged (synchronous=NORMAL is durable against a process crash)."""
    proc = child(res_dir, "commit-forever")
    try:
        last = -1
        while last + 1 < acked:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            last = int(line)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    with opened(res_dir) as (store, rec):
        n = rec.commits
        assert n >= acked
        assert_matches(store, rec, model_of(*map(numbered_record, range(n))))


# -- fingerprints ----------------------------------------------------------


def changed_state(field, value, state="counts"):
    fp = fingerprint()
    fp["states"][state] = {**fp["states"][state], field: value}
    return fp


@pytest.mark.parametrize("fp, needles", [
    ({**FP, "application": "other"}, ["application 'word-count'", "'other'"]),
    (changed_state("class", "app.Counts2"),
     ["state 'counts'", "class", "'app.Counts'", "'app.Counts2'"]),
    (changed_state("partitioning", "u64"),
     ["state 'counts'", "partitioning", "'keyed'", "'u64'"]),
    (changed_state("partition_function", "app.by_letter"),
     ["state 'counts'", "partition function", "'app.by_letter'"]),
    (changed_state("declared_keys", ["'a'"]),
     ["state 'counts'", "declared keys"]),
    (changed_state("partition_function", "app.other", state="totals"),
     ["state 'totals'", "partition function"]),
    ({**FP, "states": {"counts": FP["states"]["counts"]}},
     ["state 'totals'", "not in the application"]),
], ids=["application", "class", "partitioning", "partition-function",
        "declared-keys", "other-state", "removed-state"])
def test_an_incompatible_application_is_refused(filled, fp, needles):
    with pytest.raises(IncompatibleDirectory) as err:
        SQLiteStore(filled, WORKER).open(fp)
    msg = str(err.value)
    for n in [db(filled)] + needles:
        assert n in msg, (n, msg)
    # nothing changed and the lock was released
    with opened(filled) as (store, rec):
        assert_matches(store, rec, model_of(sample_records()[0]))


def test_adding_a_state_is_accepted_and_remembered(filled):
    new = {"class": "app.Avg", "partitioning": "single",
           "partition_function": None, "declared_keys": []}
    bigger = fingerprint(averages=new)
    with opened(filled, bigger) as (store, rec):
        assert_matches(store, rec, model_of(sample_records()[0]))
    with opened(filled, bigger) as (store, rec):
        assert rec.commits == 1
    # the new state is now part of what the directory holds
    with pytest.raises(IncompatibleDirectory, match="'averages'"):
        SQLiteStore(filled, WORKER).open(FP)
    with pytest.raises(IncompatibleDirectory, match="class"):
        SQLiteStore(filled, WORKER).open(
            fingerprint(averages={**new, "class": "app.Mean"}))


# -- the schema ------------------------------------------------------------


def test_the_tables_are_plain_and_readable_by_sqlite_utils(filled):
    database = sqlite_utils.Database(db(filled))
    try:
        assert set(database.table_names()) >= {
            "input_log", "outbox", "snapshots", "partitions", "streams",
            "sinks", "progress", "meta"}
        assert database["input_log"].count == 2
        assert database["outbox"].count == 2
        assert database["partitions"].count == 3
        assert [r["next_lsn"] for r in database["progress"].rows] == [5]
        meta = {r["key"]: r["value"] for r in database["meta"].rows}
        assert json.loads(meta["fingerprint"]) == FP
        assert meta["worker"] == WORKER
        rows = list(database["input_log"].rows_where(order_by="first_lsn"))
        assert rows[0]["failed"] == "2" and rows[0]["stream"] == "client-1"
    finally:
        database.conn.close()


def test_schema_version_and_journal_mode(filled):
    with raw(db(filled)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(
            schema.MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("value, level", [
    (None, 1), ("NORMAL", 1), ("normal", 1), ("FULL", 2), ("full", 2), ("Full", 2)])
def test_synchronous_normal_and_full_are_accepted(res_dir, value, level):
    kw = {} if value is None else {"synchronous": value}
    with opened(res_dir, **kw) as (store, _):
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == level
        store.commit(sample_records()[0])
    with opened(res_dir, **kw) as (store, rec):
        assert rec.commits == 1


@pytest.mark.parametrize("value", ["OFF", "off", "EXTRA", "", "fast", "2"])
def test_other_synchronous_values_are_refused(res_dir, value):
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(res_dir, WORKER, synchronous=value)


def test_a_newer_schema_is_refused(filled):
    with raw(db(filled)) as conn:
        conn.execute(f"PRAGMA user_version={len(schema.MIGRATIONS) + 1}")
    with pytest.raises(Exception, match="upgrade"):
        SQLiteStore(filled, WORKER).open(FP)
    with raw(db(filled)) as conn:
        conn.execute(f"PRAGMA user_version={len(schema.MIGRATIONS)}")
    with opened(filled) as (store, rec):  # lock released, data intact
        assert_matches(store, rec, model_of(sample_records()[0]))


def test_the_size_a_position_records_is_never_more_than_the_files(res_dir,
                                                                   monkeypatch):
    """A commit reuses the database size taken at most SIZE_EVERY seconds
    before (sqlite_store.py): while the file grows, the position file
    never says it was larger than it is (a restart would take that for a
    truncation), and once SIZE_EVERY has passed it records the size
    again."""
    from wallaroo.recovery import sqlite_store
    from wallaroo.recovery.files import PositionFile
    from wallaroo.recovery.records import InputRow
    clock = [1000.0]
    monkeypatch.setattr(sqlite_store.time, "monotonic", lambda: clock[0])
    frames = b"\x00\x00\x00\x04abcd" * 2000
    with opened(res_dir) as (store, _):
        pos_file = PositionFile(store.path)
        lsn = 0
        sizes = set()
        for i in range(60):
            store.commit(CommitRecord(
                number=i + 1, inputs=[InputRow(lsn, "words", None, None, 2000,
                                               frames)],
                next_lsn=lsn + 2000, replay_from=0))
            lsn += 2000
            if i % 10 == 9:  # the file grows as pages are copied into it
                with contextlib.closing(sqlite3.connect(store.path)) as c:
                    c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            pos = pos_file.read()
            assert pos.db_size <= os.path.getsize(store.path)
            assert (pos.commits, pos.next_lsn) == (i + 1, lsn)
            sizes.add(pos.db_size)
        (first,) = sizes  # taken once, at the open: the clock stood still
        assert os.path.getsize(store.path) > first + 1000 * 1000
        clock[0] += sqlite_store.SIZE_EVERY
        store.commit(CommitRecord(number=61, next_lsn=lsn, replay_from=0))
        pos = pos_file.read()
        assert first + 1000 * 1000 < pos.db_size <= os.path.getsize(store.path)


def test_a_destination_added_while_running_is_readable_by_an_older_reader(res_dir):
    """A member that joins a running cluster adds the channel to it as a
    destination (CommitRecord.new_destinations): its outputs are stored
    under a new sink id, found again after a reopen, and a reader made
    before the destination was added reads them back (a queue that
    spilled to disk)."""
    with opened(res_dir) as (store, _):
        reader = store.output_reader()
        dest = 2  # the application's two sinks, then the new channel
        # the sinks of FP by place, as a fingerprint with identities says them
        fp = dict(FP, sink_identities=[["", 0], ["", 1], ["\0peer:worker-9", 0]])
        store.commit(CommitRecord(
            number=1, new_destinations=[("\0peer:worker-9", 0)], fingerprint=fp))
        store.commit(CommitRecord(number=2, outputs=[OutputRow(dest, 0, 1, b"x")],
                                  next_out_seq={dest: 1}))
        rows = reader(dest, 0, 1 << 20)
        assert [(r.sink, r.first_seq, r.data) for r in rows] == [(dest, 0, b"x")]
    with opened(res_dir, fp) as (store, rec):
        assert rec.next_out_seq.get(dest) == 1
        assert [(r.sink, r.data) for r in store.undelivered_outputs({})] == [(dest, b"x")]
