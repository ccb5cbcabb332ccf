"""Damaged, missing and shared resilience files are refused before ``ready``
(DESIGN.md §4.2, §4.7): real ``wallaroo run`` processes, real SIGKILLs.

- two processes never run on one database, whatever is deleted;
- a missing, emptied or truncated database of a directory that held the
  worker's state is refused, naming the file;
- a deleted or damaged ``-wal`` (SQLite then silently ends its log early)
  is refused: the database is behind the position the worker last
  committed; ``wallaroo recovery accept-rollback`` accepts the loss;
- a flipped bit in any control value is refused naming the table and row;
- a state larger than SQLite's blob limit is stored over several rows;
- a full disk is refused before ``ready``; a ``--name`` that matches no
  database in a directory holding others gets a warning naming them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from wallaroo.recovery.errors import CorruptionError
from wallaroo.recovery.records import SnapshotRow
from wallaroo.recovery.sqlite_store import SQLiteStore
from wallaroo.recovery import CommitRecord, PartitionRow

from .conftest import (APPS, WAIT, WALLAROO, free_port, send_all_and_close,
                       start_receiver, start_worker, sums, u64_frames)

SUM = APPS / "u64_sum.py"
SLOW = APPS / "slow_sum.py"


def killed_dir(procs, tmp_path, n: int = 3000, stop_first: bool = False) -> str:
    """A resilience directory whose worker took 1..n on a resumable stream
    (every message ACKed, so durable) and was then SIGKILLed.  With
    ``stop_first`` the first half goes to a worker stopped cleanly (its
    pages are checkpointed into the database file), the rest to a second
    one that is killed."""
    state = str(tmp_path / "state")
    runs = [(1, n // 2 + 1), (n // 2 + 1, n + 1)] if stop_first else [(1, n + 1)]
    for i, (lo, hi) in enumerate(runs):
        # the last run's commits stay in the -wal (the tests damage it)
        env = {"WALLAROO_WAL_CHECKPOINT_EVERY": "1000"} if i == len(runs) - 1 else None
        w, port = start_worker(procs, SUM, "--resilience-dir", state,
                               "--checkpoint-interval", "1000", "--drain-timeout",
                               "0.2", env=env)
        frames = tmp_path / "values.frames"
        frames.write_bytes(u64_frames(range(1, hi)))
        done = subprocess.run(WALLAROO + ["send", f"127.0.0.1:{port}", "--frames",
                                          str(frames), "--resumable", "s1", "--quiet"],
                              capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        if i < len(runs) - 1:
            assert w.terminate() == 0
        else:
            w.signal(signal.SIGKILL)
            w.wait()
    return state


def refused(procs, state: str, *words: str, app=SUM) -> str:
    """Start a worker on ``state``: it must exit 1 before ``ready``, and
    its log must say every one of ``words``."""
    w = procs("run", app, "--in", "127.0.0.1:0", "--out",
              f"127.0.0.1:{free_port()}", "--resilience-dir", state)
    assert w.wait() == 1, w.stderr
    assert "ready" not in w.stderr
    for word in words:
        assert word in w.stderr, f"{word!r} not in:\n{w.stderr}"
    return w.stderr


def resume_count(port: int, stream: str = "s1") -> int:
    from .conftest import connect
    with connect(port) as s:
        s.sendall(f"WALLAROO-RESUME 1 {stream}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(1)
    return int(line.split()[1])


# -- 2: one process per database --------------------------------------------

def test_deleting_the_lock_file_does_not_let_a_second_worker_in(procs, tmp_path):
    state = str(tmp_path / "state")
    w, _ = start_worker(procs, SUM, "--resilience-dir", state)
    os.remove(os.path.join(state, "initializer.db.lock"))
    err = refused(procs, state, "initializer.db is held by another process")
    assert "two processes must never run on one database" in err
    # deleting the database itself (the first worker still runs on it) is
    # refused too: the directory held this worker's state
    os.remove(os.path.join(state, "initializer.db"))
    refused(procs, state, "initializer.db is missing", "refusing to start fresh")
    w.kill()


# -- 4: missing, emptied, truncated database --------------------------------

@pytest.mark.parametrize("damage", ["emptied", "deleted", "deleted beside its -wal",
                                    "truncated to half"])
def test_a_missing_or_cut_database_is_refused_before_ready(procs, tmp_path, damage):
    state = killed_dir(procs, tmp_path, n=20000, stop_first=True)
    db = os.path.join(state, "initializer.db")
    size = os.path.getsize(db)
    if damage == "emptied":
        os.truncate(db, 0)
        refused(procs, state, f"{db} is empty", "refusing to start fresh")
    elif damage == "deleted":
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.remove(db + suffix)
        refused(procs, state, f"{db} is missing", "refusing to start fresh")
    elif damage == "deleted beside its -wal":
        os.remove(db)
        refused(procs, state, f"{db} is missing")
    else:
        assert size > 8192, "the test needs a database with pages in its file"
        os.truncate(db, size // 2)
        refused(procs, state, db, "truncated")


# -- 5: deleted or damaged -wal ---------------------------------------------

@pytest.mark.parametrize("damage", ["deleted", "one byte flipped"])
def test_a_rolled_back_wal_is_refused_and_can_be_accepted(procs, tmp_path, damage):
    state = killed_dir(procs, tmp_path, n=3000)
    wal = os.path.join(state, "initializer.db-wal")
    size = os.path.getsize(wal)
    assert size > 32 + 4120, "the test needs committed frames in the WAL"
    if damage == "deleted":
        os.remove(wal)
    else:
        frames = (size - 32) // 4120
        offset = 32 + (frames // 2) * 4120 + 24 + 100
        with open(wal, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0x10]))
    err = refused(procs, state, "is behind this worker's last committed position",
                  "commits", "accept-rollback")
    assert "messages" in err and "acknowledged" in err
    # the files were left as found: refusing again says the same
    refused(procs, state, "is behind this worker's last committed position")
    done = subprocess.run(WALLAROO + ["recovery", "accept-rollback", state,
                                      "--worker", "initializer"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert "accepted as lost" in done.stdout
    w, port = start_worker(procs, SUM, "--resilience-dir", state)
    assert resume_count(port) < 3000  # what the database really holds
    w.kill()


# -- 3: checksums over control values ---------------------------------------

@pytest.mark.parametrize("table,column,where", [
    ("progress", "next_lsn", ""), ("progress", "replay_from", ""),
    ("progress", "commits", ""), ("streams", "count", " WHERE stream='s1'"),
    ("sinks", "delivered", " WHERE sink=0"), ("sinks", "next_seq", " WHERE sink=0"),
])
def test_a_flipped_bit_in_a_control_value_is_refused_naming_table_and_row(
        procs, tmp_path, table, column, where):
    state = killed_dir(procs, tmp_path, n=500)
    db = os.path.join(state, "initializer.db")
    conn = sqlite3.connect(db)
    (v,) = conn.execute(f"SELECT {column} FROM {table}{where}").fetchone()
    conn.execute(f"UPDATE {table} SET {column}=?{where}", (v ^ 16,))
    conn.commit()
    conn.close()
    err = refused(procs, state, db, f"table {table}", "failed its checksum")
    if table == "streams":
        assert "'s1'" in err
    if table == "sinks":
        assert "sink 0" in err


# -- 6: state larger than one row -------------------------------------------

def test_a_state_over_the_blob_limit_is_split_over_rows(tmp_path):
    """SQLite's limit lowered to 64 KiB: a 300 KiB snapshot is stored in
    parts and read back exactly."""
    store = SQLiteStore(str(tmp_path), "w")
    store.open({"application": "x", "states": {}, "pipelines": [], "sinks": 0})
    store._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 64 * 1024)
    blob = os.urandom(300 * 1024)
    store.commit(CommitRecord(
        partitions=[PartitionRow(0, "s", b"\x80\x05N.", "None", 0)],
        snapshots=[SnapshotRow(0, 0, blob)], next_lsn=1, replay_from=1))
    store.close()
    store = SQLiteStore(str(tmp_path), "w")
    rec = store.open({"application": "x", "states": {}, "pipelines": [], "sinks": 0})
    assert store.all_partitions()[1][0].blob == blob
    (parts,) = store._conn.execute("SELECT count(*) FROM snapshot_parts").fetchone()
    assert parts >= 5
    # a damaged part is refused like any damaged snapshot
    store._conn.execute("UPDATE snapshot_parts SET data=zeroblob(length(data)) "
                        "WHERE part=2")
    store.close()
    store = SQLiteStore(str(tmp_path), "w")
    store.open({"application": "x", "states": {}, "pipelines": [], "sinks": 0})
    try:
        with pytest.raises(CorruptionError, match="snapshot of partition 0"):
            store.scrubber()(-1, 100)
    finally:
        store.close()


def test_a_big_state_survives_sigkill_in_parts(procs, tmp_path):
    """A 3 MB state with 1 MB snapshot parts, through a real worker: the
    restart recovers it exactly and the sums stay exact."""
    env = {"WALLAROO_SNAPSHOT_PART_BYTES": str(1 << 20)}
    state = str(tmp_path / "state")
    out = tmp_path / "out.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--output", out)
    # every save_state=True in its batch's commit: the kill comes right after
    w, port = start_worker(procs, SLOW, "--resilience-dir", state, "--delay-ms",
                           "0", "--state-bytes", str(3 << 20),
                           "--save-state-interval", "0", out_port=sink, env=env)
    send_all_and_close(port, u64_frames(range(1, 301)))
    deadline = time.monotonic() + WAIT
    while 300 not in {v for v, _ in sums(out.read_bytes() if out.exists() else b"")}:
        assert time.monotonic() < deadline  # released, so committed
        time.sleep(0.05)
    w.signal(signal.SIGKILL)
    w.wait()
    conn = sqlite3.connect(os.path.join(state, "initializer.db"))
    (parts,) = conn.execute("SELECT count(*) FROM snapshot_parts").fetchone()
    conn.close()
    assert parts >= 2
    # every save_state=True in its batch's commit: the kill comes right after
    w, port = start_worker(procs, SLOW, "--resilience-dir", state, "--delay-ms",
                           "0", "--state-bytes", str(3 << 20),
                           "--save-state-interval", "0", out_port=sink, env=env)
    send_all_and_close(port, u64_frames(range(301, 401)))
    deadline = time.monotonic() + WAIT
    while 400 not in {v for v, _ in sums(out.read_bytes() if out.exists() else b"")}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for v, s in sums(out.read_bytes()):
        assert s == v * (v + 1) // 2
    w.kill()


# -- 9: smaller ones ---------------------------------------------------------

def test_a_name_matching_no_database_warns_and_names_the_others(procs, tmp_path):
    state = str(tmp_path / "state")
    w, _ = start_worker(procs, SUM, "--resilience-dir", state, "--drain-timeout", "0.2")
    w.terminate()
    w2, _ = start_worker(procs, SUM, "--resilience-dir", state, "--name", "initialiser")
    assert "holds no database for worker 'initialiser' but holds worker(s) " \
           "'initializer'" in w2.stderr
    assert "Was --name mistyped?" in w2.stderr


def _can_mount_tmpfs(path) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                           str(path)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_is_refused_before_ready(procs, tmp_path):
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        state = disk / "state"
        w, port = start_worker(procs, SUM, "--resilience-dir", str(state),
                               "--drain-timeout", "0.2")
        send_all_and_close(port, u64_frames(range(1, 101)))
        assert w.terminate() == 0
        with open(disk / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        refused(procs, str(state), "no room to write", str(state))
        os.remove(disk / "filler")
        w, port = start_worker(procs, SUM, "--resilience-dir", str(state))
        w.kill()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_an_empty_resilience_dir_name_is_an_error(procs):
    w = procs("run", SUM, "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
              "--resilience-dir", "")
    assert w.wait() == 2
    assert "--resilience-dir" in w.stderr and "empty" in w.stderr


def test_a_resilience_dir_under_a_file_says_so(procs, tmp_path):
    (tmp_path / "afile").write_text("x")
    w = procs("run", SUM, "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
              "--resilience-dir", str(tmp_path / "afile" / "sub"))
    assert w.wait() == 1
    assert "is a file, not a directory" in w.stderr
    assert "--resilience-dir" in w.stderr
