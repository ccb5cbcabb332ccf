"""Long runs stay flat (opt in: ``pytest -m slow -s tests/chaos/test_soak.py``).

A worker with resilience counts 100,000 keys (benchmarks/recovery_app.py)
under steady load, 20,000 messages/s for 10 minutes (WALLAROO_SOAK_SECONDS
to change it), with checkpoints every second.  Every 10 s the resilience
directory's size without the WAL (the database and its small files), the
WAL's size and the worker's resident memory are sampled.  The directory
and the memory must reach a plateau: over the last third of the run
neither grows by 5% or more.  The WAL file keeps its largest size until a
restart finds it past ``JOURNAL_SIZE_LIMIT`` (recovery/checkpointer.py),
so it grows in steps up to its bound: it must stay under the size at which
the commit path restarts it itself.  The curve is printed (``-s``).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from ..conftest import REPO, WALLAROO, start_receiver, start_worker

APP = str(REPO / "benchmarks" / "recovery_app.py")
SECONDS = float(os.environ.get("WALLAROO_SOAK_SECONDS", 600))
RATE = 20000
KEYS = 100000
EVERY = 10.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def dir_mb(path, wal: bool = False) -> float:
    """MB of the directory's files other than WAL files, or (``wal``) of
    its WAL files only."""
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if f.endswith("-wal") == wal) / 1e6


@pytest.mark.slow
def test_a_long_steady_run_reaches_a_plateau(procs, tmp_path):
    state = tmp_path / "state"
    recv, sink = start_receiver(procs, "--output", os.devnull, "--quiet")
    w, port = start_worker(procs, APP, "--resilience-dir", state,
                           "--checkpoint-interval", "1", out_port=sink)
    total = int(SECONDS * RATE) + RATE * 30
    sender = subprocess.Popen(
        WALLAROO + ["send", f"127.0.0.1:{port}", "--u64", str(KEYS), "--start", "0",
                    "--repeat", str(total // KEYS + 1), "--rate", str(RATE),
                    "--resumable", "soak", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []  # (seconds, directory MB without the WAL, RSS MB, WAL MB)
    t0 = time.monotonic()
    try:
        while (now := time.monotonic() - t0) < SECONDS:
            time.sleep(EVERY)
            assert sender.poll() is None, sender.stderr.read()
            samples.append((now + EVERY, dir_mb(state), rss_mb(w.pid),
                            dir_mb(state, wal=True)))
    finally:
        sender.kill()
        sender.wait()
    assert w.terminate() == 0, w.stderr
    recv.terminate()
    taken = int(re.search(r"stopped: (\d+) messages in", w.stderr).group(1))
    print(f"\n  {taken} messages in {SECONDS:.0f}s ({taken / SECONDS:,.0f}/s)")
    assert taken >= 0.9 * RATE * SECONDS, "the load was not steady"
    print("  seconds  directory MB  RSS MB  WAL MB")
    for t, d, r, wal in samples:
        print(f"  {t:7.0f}  {d:12.1f}  {r:6.1f}  {wal:6.1f}")
    third = samples[len(samples) * 2 // 3:]
    for col, what in ((1, "directory size"), (2, "resident memory")):
        start, peak = third[0][col], max(s[col] for s in third)
        growth = (peak - start) / start
        print(f"  {what}: {samples[0][col]:.1f} MB at {samples[0][0]:.0f}s, "
              f"{samples[len(samples) // 2][col]:.1f} MB at "
              f"{samples[len(samples) // 2][0]:.0f}s, {samples[-1][col]:.1f} MB "
              f"at {samples[-1][0]:.0f}s; last third +{growth:.1%}")
        assert growth < 0.05, f"{what} grew {growth:.1%} over the last third"
    from wallaroo.recovery.checkpointer import HARD_LIMIT_FACTOR, WAL_LIMIT
    biggest = max(s[3] for s in samples)
    print(f"  WAL: at most {biggest:.1f} MB")
    assert biggest * 1e6 < HARD_LIMIT_FACTOR * WAL_LIMIT, "the WAL outgrew its bound"
