"""Generator sources (``wallaroo.GenSourceConfig``): their position is part
of every commit, so a worker SIGKILLed while one runs continues the
sequence when it comes back, and with resumable sinks every number arrives
exactly once; on a cluster one worker runs it."""

from __future__ import annotations

import os
import signal
import time

from tests.chaos.run_chaos import Proc, free_port, wallaroo

APP = os.path.join(os.path.dirname(__file__), "apps", "gen_numbers.py")


def received_numbers(path: str) -> list[int]:
    with open(path, "rb") as f:
        data = f.read()
    return [int(x) for x in data[:data.rfind(b"\n") + 1].split()]


def wait_numbers(path: str, n: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    got: list[int] = []
    while time.monotonic() < deadline:
        got = received_numbers(path) if os.path.exists(path) else []
        if len(got) >= n:
            break
        time.sleep(0.1)
    return got


def test_a_killed_worker_continues_its_generator(tmp_path):
    count = 300000
    out = str(tmp_path / "out.txt")
    sink = free_port()
    receiver = Proc(wallaroo("receive", "--listen", f"127.0.0.1:{sink}",
                             "--resumable", "--framing", "lines", "--output", out),
                    str(tmp_path / "receiver.log"))
    state = str(tmp_path / "state")
    args = ("run", APP, "--out", f"127.0.0.1:{sink}", "--resilience-dir", state,
            "--resumable-sinks", f"COUNT={count}")
    worker = None
    try:
        receiver.wait_for(r"^listening on", 30)
        kills = 0
        for delay in (0.3, 0.5):
            worker = Proc(wallaroo(*args), str(tmp_path / "worker.log"))
            worker.wait_for(r"^ready worker=initializer sources=gen:Numbers", 30)
            time.sleep(delay)
            if len(wait_numbers(out, 0, 0)) >= count:
                break
            worker.p.send_signal(signal.SIGKILL)
            worker.p.wait()
            kills += 1
        assert kills == 2, "the generator finished before the kills"
        worker = Proc(wallaroo(*args), str(tmp_path / "worker.log"))
        worker.wait_for(r"continuing after the \d+ messages it made before", 30)
        wait_numbers(out, count)
        time.sleep(0.5)  # anything more would be a duplicate
        worker.p.send_signal(signal.SIGTERM)
        assert worker.p.wait(timeout=30) == 0
        assert received_numbers(out) == list(range(1, count + 1))
    finally:
        for p in (worker, receiver):
            if p is not None:
                p.kill()


def test_on_a_cluster_one_worker_runs_the_generator(tmp_path):
    count = 5000
    out = str(tmp_path / "out.txt")
    sink = free_port()
    receiver = Proc(wallaroo("receive", "--listen", f"127.0.0.1:{sink}",
                             "--framing", "lines", "--output", out),
                    str(tmp_path / "receiver.log"))
    sup = None
    try:
        receiver.wait_for(r"^listening on", 30)
        sup = Proc(wallaroo("run", APP, "--out", f"127.0.0.1:{sink}", "--workers", "3",
                            f"COUNT={count}"), str(tmp_path / "sup.log"))
        sup.wait_for(r"^ready workers=3", 60)
        got = wait_numbers(out, count)
        time.sleep(0.5)
        assert sorted(received_numbers(out)) == list(range(1, count + 1))
        ended = [line for line in sup.lines if "the generator ended" in line]
        assert len(ended) == 1, sup.lines
        assert sup.stop(timeout=30) == 0
        assert got
    finally:
        for p in (sup, receiver):
            if p is not None:
                p.kill()
