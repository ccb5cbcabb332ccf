"""Incremental vacuum while a worker runs (wallaroo/recovery/vacuum.py): a
burst's free pages go back to the file system in small steps, the position
file never records more than the file will be (a SIGKILL at any moment of
the steps is never mistaken for a truncated database), and a running worker
gives the pages back on its own once the burst has passed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from wallaroo.recovery import CommitRecord, InputRow
from wallaroo.recovery.files import PositionFile
from wallaroo.recovery.sqlite_store import SQLiteStore

from .conftest import APPS, REPO, WAIT, WALLAROO, free_port, start_worker, u64_frames
from .test_store import FP, WORKER
from .test_store_guards import resume_count

ROW = 100_000  # bytes of input per commit of the burst


def burst(store: SQLiteStore, rows: int, pause: float = 0.0) -> int:
    """``rows`` commits of one large input each, kept (replay_from 0);
    -> the next lsn."""
    blob = os.urandom(ROW)
    for lsn in range(rows):
        store.commit(CommitRecord(inputs=[InputRow(lsn, "words", None, None, 1, blob)],
                                  next_lsn=lsn + 1, replay_from=0))
        if pause:
            time.sleep(pause)  # let the checkpoints copy the WAL into the file
    return rows


def _settled_size(store) -> int:
    """The database file's size once the background WAL checkpoints have
    copied the burst into it (a later round would grow the file while the
    steps shrink it)."""
    sizes = []
    while len(sizes) < 4 or len(set(sizes[-4:])) > 1:
        store._checkpointer.wake()
        time.sleep(0.05)
        sizes.append(os.path.getsize(store.path))
        assert len(sizes) < 200, sizes
    return sizes[-1]


def test_a_running_store_gives_a_bursts_pages_back_in_steps(tmp_path):
    store = SQLiteStore(str(tmp_path), WORKER)
    store.open(FP)
    lsn = burst(store, 300, pause=0.003)
    path = store.path
    peak = _settled_size(store)
    assert peak > 25e6, peak  # the burst reached the database file
    # the whole log is past replay_from: its pages are freed, then given back
    sizes = []
    for _ in range(80):
        store.commit(CommitRecord(next_lsn=lsn, replay_from=lsn))
        time.sleep(0.01)
        pos = PositionFile(path).read()
        size = os.path.getsize(path)
        assert pos.db_size <= size, (pos, size)  # never "truncated"
        sizes.append(size)
    assert store.vacuum_steps >= 6
    assert not store.vacuum_pending
    assert sizes[-1] < peak / 3, (peak, sizes)  # while running, no restart
    assert sizes == sorted(sizes, reverse=True)  # step by step, never growing
    store.close()
    with sqlite3.connect(path) as conn:
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
    assert mode == 2 and free <= 2048  # what is kept for reuse, no more
    again = SQLiteStore(str(tmp_path), WORKER)
    rec = again.open(FP)  # the position check passes
    assert rec.next_lsn == lsn and rec.replay_from == lsn
    again.close()


CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from wallaroo.recovery import vacuum, CommitRecord
    from wallaroo.recovery.sqlite_store import SQLiteStore
    from tests.test_store import FP, WORKER
    from tests.test_vacuum import burst
    vacuum.STEP_PAGES = vacuum.IDLE_STEP_PAGES = 8  # many small steps
    store = SQLiteStore(sys.argv[1], WORKER)
    rec = store.open(FP)
    lsn = rec.next_lsn or burst(store, 200, pause=0.002)
    print("vacuuming", flush=True)
    while True:
        store.commit(CommitRecord(next_lsn=lsn, replay_from=lsn))
        print(store.vacuum_steps, flush=True)
        time.sleep(0.03)  # a checkpoint may shrink the file meanwhile
""")


def test_a_sigkill_at_any_moment_of_the_steps_is_not_taken_for_truncation(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    rng = random.Random(11)
    state = str(tmp_path / "state")
    steps = 0
    for _ in range(8):
        child = subprocess.Popen([sys.executable, str(script), state],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "vacuuming"
            time.sleep(rng.uniform(0.2, 0.8))
        finally:
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=WAIT)
        steps += max([0] + [int(x) for x in out.split()])  # this run's
        store = SQLiteStore(state, WORKER)
        rec = store.open(FP)  # refused, were the file shorter than recorded
        assert rec.next_lsn == 200 and rec.replay_from == 200
        store.close()
    assert steps > 30  # the kills landed among vacuum steps


SUM = APPS / "u64_sum.py"


def test_a_running_worker_gives_the_pages_back_once_the_burst_has_passed(procs, tmp_path):
    """No restart, no compact: with its sink away, a worker's outbox holds
    1,000,000 outputs; once the receiver comes and takes them, their rows
    are deleted and the idle worker's empty commits give the pages back."""
    n = 1_000_000
    state = str(tmp_path / "state")
    out_port = free_port()  # nobody listens yet
    w, port = start_worker(procs, SUM, "--resilience-dir", state, out_port=out_port)
    frames = tmp_path / "values.frames"
    frames.write_bytes(u64_frames(range(1, n + 1)))
    sent = subprocess.run(WALLAROO + ["send", f"127.0.0.1:{port}", "--frames",
                                      str(frames), "--resumable", "s1", "--quiet"],
                          capture_output=True, text=True, timeout=WAIT * 3)
    assert sent.returncode == 0, sent.stderr
    db = os.path.join(state, "initializer.db")
    peak = size_after(db, lambda s: s > 18e6)  # the WAL copied into the file
    rx = procs("receive", "--listen", f"127.0.0.1:{out_port}", "--framing",
               "length", "--expect", str(n), stdout=subprocess.DEVNULL)
    assert rx.wait() == 0
    small = size_after(db, lambda s: s < peak / 2)
    assert small < peak / 2, (peak, small)
    assert w.terminate() == 0
    w, port = start_worker(procs, SUM, "--resilience-dir", state)
    assert resume_count(port) == n  # everything it had
    assert w.terminate() == 0


def size_after(path: str, good) -> int:
    """The file's size once ``good(size)``, or when WAIT has passed."""
    deadline = time.monotonic() + WAIT
    size = os.path.getsize(path)
    while not good(size) and time.monotonic() < deadline:
        time.sleep(0.1)
        size = os.path.getsize(path)
    assert good(size), size
    return size
