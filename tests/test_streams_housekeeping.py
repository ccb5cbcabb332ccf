"""Resumable streams nobody uses any more can be forgotten
(``--forget-streams-after``), and ``recovery inspect`` summarises a
directory that knows many of them (``--streams`` lists every one)."""

from __future__ import annotations

import subprocess
import sys
import time

from wallaroo.recovery import CommitRecord
from wallaroo.recovery.sqlite_store import SQLiteStore

from .conftest import APPS, WAIT, connect, start_worker, u64_frames
from .test_store_guards import resume_count

SUM = APPS / "u64_sum.py"


def test_idle_streams_are_forgotten_and_active_ones_kept(procs, tmp_path):
    state = str(tmp_path / "state")
    w, port = start_worker(procs, SUM, "--resilience-dir", state,
                           "--forget-streams-after", "0.5", "--drain-timeout", "0.5")
    for name in ("old-1", "old-2"):
        with connect(port) as s:
            s.sendall(f"WALLAROO-RESUME 1 {name}\n".encode() + u64_frames([1, 2]))
            s.shutdown(1)
            while s.recv(100):
                pass
    keep = connect(port)  # connected all along: never forgotten
    keep.sendall(b"WALLAROO-RESUME 1 live\n" + u64_frames([5]))
    line = w.wait_line("forgetting 2 streams not seen for 0.5s")
    assert "'old-1'" in line and "'old-2'" in line
    assert "a client coming back starts again at 0" in line
    assert resume_count(port, "old-1") == 0
    keep.close()
    assert w.terminate() == 0, w.stderr
    import sqlite3
    conn = sqlite3.connect(f"{state}/initializer.db")
    names = {n for (n,) in conn.execute("SELECT stream FROM streams")}
    conn.close()
    assert "old-2" not in names


def test_inspect_summarises_many_streams(tmp_path):
    store = SQLiteStore(str(tmp_path), "initializer")
    store.open({"application": "x", "states": {}, "pipelines": ["p"], "sinks": 0})
    n = 100_000
    store.commit(CommitRecord(streams={("p", f"client-{i}"): i for i in range(n)},
                              next_lsn=0, replay_from=0))
    store.close()
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "wallaroo.cli", "recovery",
                           "inspect", str(tmp_path)], capture_output=True,
                          text=True, timeout=WAIT)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) < 80, len(lines)
    assert f"resumable streams: {n}" in done.stdout
    assert "--streams for every one" in done.stdout
    assert took < 10
    every = subprocess.run([sys.executable, "-m", "wallaroo.cli", "recovery",
                            "inspect", str(tmp_path), "--streams"],
                           capture_output=True, text=True, timeout=120)
    assert every.returncode == 0
    assert "client-99999" in every.stdout and "client-12345" in every.stdout


def test_channels_from_other_workers_are_never_forgotten():
    """A peer away for longer than --forget-streams-after must still find its
    count: forgetting it would make the worker answer HAVE 0 to a sender that
    was acknowledged further (a channel stuck for good)."""
    from wallaroo.connectors.resume import StreamRegistry
    reg = StreamRegistry({("alphabet", "client"): 5, ("peer", "peer:worker-1"): 7},
                         {("alphabet", "client"): 1.0, ("peer", "peer:worker-1"): 1.0})
    assert reg.idle(older_than=100.0) == [("alphabet", "client")]
