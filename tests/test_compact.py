"""``wallaroo recovery compact DIR``: a stopped worker's free pages go back
to the file system, and the worker starts again on the compacted database
with everything it had (its resumable stream resumes where it was); refused
while the worker runs, and on a rolled-back database."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess

from .conftest import (APPS, WAIT, WALLAROO, start_receiver, start_worker,
                       u64_frames)
from .test_store_guards import killed_dir, resume_count

SUM = APPS / "u64_sum.py"
N = 100_000


def compact(state: str) -> subprocess.CompletedProcess:
    return subprocess.run(WALLAROO + ["recovery", "compact", state],
                          capture_output=True, text=True, timeout=WAIT)


def test_compact_shrinks_a_stopped_workers_database_and_keeps_its_state(procs, tmp_path):
    state = str(tmp_path / "state")
    rx, rx_port = start_receiver(procs, "--framing", "length", "--expect", str(N))
    w, port = start_worker(procs, SUM, "--resilience-dir", state, out_port=rx_port)
    frames = tmp_path / "values.frames"
    frames.write_bytes(u64_frames(range(1, N + 1)))
    sent = subprocess.run(WALLAROO + ["send", f"127.0.0.1:{port}", "--frames",
                                      str(frames), "--resumable", "s1", "--quiet"],
                          capture_output=True, text=True, timeout=WAIT)
    assert sent.returncode == 0, sent.stderr
    assert rx.wait() == 0  # every output delivered: their outbox rows are gone
    # refused while the worker runs
    busy = compact(state)
    assert busy.returncode == 1
    assert "a worker runs on it; stop it first" in busy.stderr, busy.stderr
    assert w.terminate() == 0
    done = compact(state)
    assert done.returncode == 0, done.stderr
    m = re.search(r"worker 'initializer': ([\d,]+) -> ([\d,]+) bytes", done.stdout)
    assert m, done.stdout
    before, after = (int(g.replace(",", "")) for g in m.groups())
    assert after < before / 2, done.stdout  # the input log and outbox pages
    assert os.path.getsize(os.path.join(state, "initializer.db")) == after
    # the worker starts on it (the position check passes) with all it had
    w, port = start_worker(procs, SUM, "--resilience-dir", state)
    assert resume_count(port) == N
    assert w.terminate() == 0


def test_compact_refuses_a_rolled_back_database(procs, tmp_path):
    state = killed_dir(procs, tmp_path, n=3000)
    os.remove(os.path.join(state, "initializer.db-wal"))
    done = compact(state)
    assert done.returncode == 1
    assert "is behind this worker's last committed position" in done.stderr


def test_compact_turns_incremental_vacuum_on_in_an_earlier_releases_database(procs, tmp_path):
    """Databases made before incremental vacuum (tests/fixtures/upgrade)
    keep working without it; compacting one turns it on, and the worker
    starts on it with what it had."""
    from .test_upgrades import APP, FIXTURES
    state = tmp_path / "state"
    shutil.copytree(FIXTURES / "v4" / "state", state)
    db = str(state / "initializer.db")

    def mode() -> int:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    assert mode() == 0
    done = compact(str(state))
    assert done.returncode == 0, done.stderr
    assert mode() == 2  # INCREMENTAL
    w, port = start_worker(procs, APP, "--resilience-dir", str(state))
    assert resume_count(port, "up-1") == 1000
    assert w.terminate() == 0
