"""Upgrades keep state (DESIGN.md §4.8): resilience directories made by
earlier releases of the engine (``tests/fixtures/upgrade/v*``, each made by
``tests/fixtures/make_upgrade_dir.py`` with the engine of its time and never
regenerated) are opened by this one: the schema migrates, the input log is
replayed, every output waiting in the outbox reaches its sink, the
resumable stream resumes where it was, and new input carries on exactly.

The application is the sequence-window validator: every input 1..N must have
the window that ends with it, and no window may show a gap or a repeat.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time

import pytest

from wallaroo.recovery import schema

from .chaos.validate import read_frames, validate
from .conftest import (REPO, WAIT, WALLAROO, start_receiver, start_worker,
                       u64_frames)

FIXTURES = REPO / "tests" / "fixtures" / "upgrade"
APP = REPO / "tests" / "chaos" / "sequence_window.py"
VERSIONS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_directory_from_an_earlier_release_recovers_exactly(procs, tmp_path, version):
    fixture = FIXTURES / version
    state = tmp_path / "state"
    shutil.copytree(fixture / "state", state)
    assert not (state / "initializer.db.manifest").exists() or version != "v1"
    out = tmp_path / "out.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--format", "raw",
                                "--output", out)
    w, port = start_worker(procs, APP, "--resilience-dir", state, out_port=sink)
    # the undelivered outputs (of 501..1000) arrive first
    deadline = time.monotonic() + WAIT
    while len(read_frames(out.read_bytes() if out.exists() else b"")) < 500:
        assert time.monotonic() < deadline, w.stderr
        time.sleep(0.05)
    # the stream resumes at 1000; 1001..1200 follow
    frames = tmp_path / "more.frames"
    frames.write_bytes(u64_frames(range(1, 1201)))
    done = subprocess.run(WALLAROO + ["send", f"127.0.0.1:{port}", "--frames",
                                      str(frames), "--resumable", "up-1", "--quiet"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert "resumed at message 1000" in done.stderr
    assert w.terminate() == 0
    recv.terminate()
    before = read_frames((fixture / "received-before.bin").read_bytes())
    report = validate(before + read_frames(out.read_bytes()), 1200)
    assert report.ok, report.summary()
    conn = sqlite3.connect(state / "initializer.db")
    (v,) = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    assert v == len(schema.MIGRATIONS)
    assert (state / "initializer.db.manifest").exists()
    assert "replayed" in w.stderr and "re-queued" in w.stderr


def test_an_older_engine_is_refused_by_a_newer_directory(tmp_path):
    """The other direction: a directory of a newer schema is refused with
    a message saying so (simulated by raising the version)."""
    from wallaroo.recovery.sqlite_store import SQLiteStore
    state = tmp_path / "state"
    shutil.copytree(FIXTURES / VERSIONS[0] / "state", state)
    conn = sqlite3.connect(state / "initializer.db")
    conn.execute(f"PRAGMA user_version={len(schema.MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    store = SQLiteStore(str(state), "initializer")
    with pytest.raises(schema.SchemaTooNew, match="newer than this wallaroo"):
        store.open({"application": "sequence window"})
    assert os.path.exists(state / "initializer.db")


@pytest.mark.parametrize("version", VERSIONS)
def test_resumable_sinks_on_an_earlier_release_outbox(procs, tmp_path, version):
    """Outputs an earlier release left in the outbox do not record where
    each ends: with --resumable-sinks they are refused with the way out; a
    run without the flag delivers them; then the flag works, and with a
    resumable receiver every later output arrives exactly once."""
    fixture = FIXTURES / version
    state = tmp_path / "state"
    shutil.copytree(fixture / "state", state)
    w = procs("run", APP, "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
              "--resilience-dir", state, "--resumable-sinks")
    assert w.wait() == 1
    assert "500 undelivered outputs were written for a plain sink" in w.stderr
    assert "Run once without --resumable-sinks" in w.stderr
    plain = tmp_path / "plain.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--output", plain,
                                "--expect", "500")
    w, port = start_worker(procs, APP, "--resilience-dir", state, out_port=sink)
    assert recv.wait() == 0
    assert w.terminate() == 0
    exact = tmp_path / "exact.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--output", exact,
                                "--resumable")
    w, port = start_worker(procs, APP, "--resilience-dir", state, "--resumable-sinks",
                           out_port=sink)
    frames = tmp_path / "more.frames"
    frames.write_bytes(u64_frames(range(1, 1201)))
    done = subprocess.run(WALLAROO + ["send", f"127.0.0.1:{port}", "--frames",
                                      str(frames), "--resumable", "up-1", "--quiet"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + WAIT
    while len(read_frames(exact.read_bytes() if exact.exists() else b"")) < 200:
        assert time.monotonic() < deadline, w.stderr
        time.sleep(0.05)
    assert w.terminate() == 0
    recv.terminate()
    later = read_frames(exact.read_bytes())
    assert len(later) == 200 and len(set(later)) == 200  # exactly once
    before = read_frames((fixture / "received-before.bin").read_bytes())
    report = validate(before + read_frames(plain.read_bytes()) + later, 1200)
    assert report.ok, report.summary()
