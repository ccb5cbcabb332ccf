"""The key index (wallaroo/recovery/key_index.py): new partitions wait in
memory and are merged into ``partition_keys`` in sorted steps; a partition
is found by its state and key hash before, during and after its merge,
across a reopen and a crash in the middle of a merge; the watermark is
checksummed."""

from __future__ import annotations

import pickle
import sqlite3

import pytest

from wallaroo.recovery import (CommitRecord, CorruptionError, InputRow, PartitionRow,
                               key_index)
from wallaroo.recovery.sqlite_store import SQLiteStore

from .test_store import FP, WORKER


@pytest.fixture
def small_epochs(monkeypatch):
    monkeypatch.setattr(key_index, "EPOCH", 40)
    monkeypatch.setattr(key_index, "BUCKETS", 4)


def spread(pid: int) -> int:
    return (pid * 2654435761) % 2 ** 32  # over the 32-bit range, no order


def rows(first_pid: int, n: int) -> list[PartitionRow]:
    # two keys share a hash (a collision)
    return [PartitionRow(pid, "counts", pickle.dumps(f"k{pid}"), repr(f"k{pid}"), 0,
                         pid % 4, spread(5 if pid == 3 else pid))
            for pid in range(first_pid, first_pid + n)]


def an_input(lsn: int) -> list[InputRow]:
    """A commit that took input: merges wait for EPOCH partitions."""
    return [InputRow(lsn, "words", None, None, 1, b"\x00\x00\x00\x01a")]


def found(store: SQLiteStore, made: list[PartitionRow]) -> None:
    """Every partition made is found by its state and key hash."""
    find = store.partition_finder()
    for p in made:
        pids = [prow.pid for prow, _ in find(p.state, p.key_hash)]
        assert p.pid in pids, (p.pid, pids, store._keys.below)
        assert len(pids) == len(set(pids))


def index_entries(store: SQLiteStore) -> int:
    return store._conn.execute("SELECT count(*) FROM partition_keys").fetchone()[0]


def test_partitions_are_found_before_during_and_after_their_merge(tmp_path, small_epochs):
    store = SQLiteStore(str(tmp_path), WORKER)
    store.open(FP)
    made: list[PartitionRow] = []
    for batch in range(12):
        new = rows(len(made), 9)
        store.commit(CommitRecord(partitions=new, inputs=an_input(batch)))
        made += new
        found(store, made)  # mid-merge included: merges take several commits
    keys = store._keys
    assert keys.merges >= 1 and keys.below > 0
    assert index_entries(store) >= keys.below  # every pid below it is in the table
    # what memory holds is past the watermark; with the table, it is all
    in_memory = [p for pids in keys.recent.values() for p in pids]
    assert all(p >= keys.below for p in in_memory)
    in_table = {p for (p,) in store._conn.execute("SELECT pid FROM partition_keys")}
    assert in_table | set(in_memory) == set(range(len(made)))
    store.close()
    again = SQLiteStore(str(tmp_path), WORKER)
    again.open(FP)
    assert again._keys.below == keys.below
    found(again, made)
    assert again.partition_states() == ["counts"]
    again.close()


def test_a_commit_without_input_merges_what_waits(tmp_path, small_epochs):
    """Below EPOCH, partitions wait while input comes; the first commit
    that took none (checkpointing, idle) starts merging them, so a restart
    after the input stopped has nothing to scan."""
    store = SQLiteStore(str(tmp_path), WORKER)
    store.open(FP)
    made = rows(0, 10)
    store.commit(CommitRecord(partitions=made, inputs=an_input(0)))
    assert store._keys.waiting == 10 and store._keys.merges == 0
    for _ in range(4):  # one bucket per commit
        store.commit(CommitRecord(next_lsn=1))
    assert store._keys.merges == 1 and store._keys.below == 10
    assert not store._keys.recent and index_entries(store) == 10
    found(store, made)
    store.close()


def test_a_crash_in_the_middle_of_a_merge_is_redone_at_the_next_start(tmp_path, small_epochs):
    store = SQLiteStore(str(tmp_path), WORKER)
    store.open(FP)
    made = rows(0, 45)  # past the epoch: its merge starts after this commit
    store.commit(CommitRecord(partitions=made))
    assert store._keys._merge is not None and store._keys.below == 0  # one step done
    store.close()  # what a crash leaves: some entries in the table, the watermark not moved
    again = SQLiteStore(str(tmp_path), WORKER)
    again.open(FP)
    assert again._keys.below == 0
    assert 0 < index_entries(again) < 45
    found(again, made)
    for _ in range(4):  # the merge again, from its start (INSERT OR IGNORE)
        again.commit(CommitRecord())
    assert again._keys.below == 45 and index_entries(again) == 45
    assert not again._keys.recent
    found(again, made)
    again.close()


def test_a_damaged_watermark_is_refused(tmp_path):
    store = SQLiteStore(str(tmp_path), WORKER)
    store.open(FP)
    store.commit(CommitRecord(partitions=rows(0, 3)))
    path = store.path
    store.close()
    conn = sqlite3.connect(path)
    value = conn.execute("SELECT value FROM meta WHERE key=?",
                         (key_index.META_KEY,)).fetchone()[0]
    # a watermark moved past partitions not in the table would hide them
    conn.execute("UPDATE meta SET value=? WHERE key=?",
                 (value.replace('"below": 0', '"below": 3'), key_index.META_KEY))
    conn.commit()
    conn.close()
    with pytest.raises(CorruptionError, match="watermark in table meta failed its checksum"):
        SQLiteStore(str(tmp_path), WORKER).open(FP)
