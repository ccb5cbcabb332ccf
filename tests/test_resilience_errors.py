"""What `wallaroo run --resilience-dir` refuses, and how it says so."""

import os
import struct
import subprocess
import sys

import pytest

from wallaroo.recovery.errors import UnpicklableState
from wallaroo.testing import Driver

HERE = os.path.dirname(__file__)
UNPICKLABLE = os.path.join(HERE, "apps", "unpicklable_app.py")
ALPHABET = os.path.join(os.path.dirname(HERE), "examples", "alphabet_partitioned",
                        "alphabet_partitioned.py")
ADDRS = ["--in", "127.0.0.1:0", "--out", "127.0.0.1:9"]


def test_unpicklable_state_runs_without_resilience():
    d = Driver(UNPICKLABLE, args=ADDRS)
    d.start()
    d.feed("words", [b"apple", b"avocado"])
    d.run_batch()
    assert d.received(0) == b"apple 1\navocado 2\n"


def test_unpicklable_state_fails_at_first_snapshot_naming_class_and_key(tmp_path):
    d = Driver(UNPICKLABLE, args=ADDRS, resilience_dir=str(tmp_path))
    d.start()
    d.feed("words", [b"apple"])
    with pytest.raises(UnpicklableState) as err:
        d.run_batch()
    msg = str(err.value)
    assert "state 'guarded'" in msg and "unpicklable_app.Guarded" in msg
    assert "key 'a'" in msg


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "wallaroo.cli", "run", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_wallaroo_run_stops_with_exit_1_on_unpicklable_state(tmp_path):
    import socket
    worker = subprocess.Popen(
        [sys.executable, "-m", "wallaroo.cli", "run", UNPICKLABLE, *ADDRS,
         "--resilience-dir", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("ready"):
            line = worker.stderr.readline()
            assert line, "worker exited before ready"
        port = int(line.split("sources=")[1].split()[0].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(struct.pack(">I", 5) + b"apple")
        err = worker.communicate(timeout=30)[1]
        assert worker.returncode == 1
        assert "Guarded" in err and "key 'a'" in err and "cannot be pickled" in err
    finally:
        worker.kill()


def test_wallaroo_run_refuses_another_applications_directory(tmp_path):
    d = Driver(UNPICKLABLE, args=ADDRS, resilience_dir=str(tmp_path))
    d.start()  # the directory now belongs to application 'unpicklable'
    d.crash()
    done = run_cli(ALPHABET, *ADDRS, "--resilience-dir", str(tmp_path))
    assert done.returncode == 1
    assert "belongs to application 'unpicklable', not 'alphabet'" in done.stderr
    assert "Use another --resilience-dir" in done.stderr


def test_wallaroo_run_refuses_a_directory_locked_by_a_running_worker(tmp_path):
    d = Driver(ALPHABET, args=ADDRS, resilience_dir=str(tmp_path))
    d.start()  # holds the lock
    try:
        done = run_cli(ALPHABET, *ADDRS, "--resilience-dir", str(tmp_path))
        assert done.returncode == 1
        assert "held by another process" in done.stderr
    finally:
        d.crash()
