"""Outputs belong to their sink's identity (its pipeline and its place
among that pipeline's sinks), never to its place in the application
(DESIGN.md §4.4): real processes, undelivered outputs in the outbox."""

from __future__ import annotations

import signal
import subprocess

from .conftest import APPS, WAIT, WALLAROO, free_port, u64_frames

APP = APPS / "two_sinks.py"


def killed_with_undelivered_outputs(procs, tmp_path, ins, outs) -> str:
    """10 messages into each pipeline, acknowledged (so committed), while
    nobody listens on the sinks; then SIGKILL."""
    state = str(tmp_path / "state")
    w = procs("run", APP, "--in", ins, "--out", outs, "--resilience-dir", state)
    w.wait_line(lambda line: line.startswith("ready"))
    for i, port in enumerate(p.split(":")[1] for p in ins.split(",")):
        frames = tmp_path / f"in{i}.frames"
        frames.write_bytes(u64_frames(range(100 * i + 1, 100 * i + 11)))
        done = subprocess.run(WALLAROO + ["send", f"127.0.0.1:{port}", "--frames",
                                          str(frames), "--resumable", f"s{i}", "--quiet"],
                              capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
    w.signal(signal.SIGKILL)
    w.wait()
    return state


def addrs(n: int) -> str:
    return ",".join(f"127.0.0.1:{free_port()}" for _ in range(n))


def test_a_reordered_application_delivers_each_sinks_outputs_to_that_sink(
        procs, tmp_path):
    ins, outs = addrs(2), addrs(2)
    state = killed_with_undelivered_outputs(procs, tmp_path, ins, outs)
    got = {}
    receivers = []
    for name, addr in zip("ab", outs.split(",")):
        out = tmp_path / f"{name}.txt"
        r = procs("receive", "--listen", addr, "--framing", "lines", "--format",
                  "text", "--output", out, "--expect", "10")
        r.wait_line(lambda line: line.startswith("listening"))
        receivers.append((name, r, out))
    w = procs("run", APP, "--in", ins, "--out", outs, "--resilience-dir", state,
              "--swap")
    w.wait_line(lambda line: line.startswith("ready"))
    for name, r, out in receivers:
        assert r.wait() == 0, r.stderr
        got[name] = out.read_text().split()
    assert got["a"] == [f"a:{v}" for v in range(1, 11)]
    assert got["b"] == [f"b:{v}" for v in range(101, 111)]
    w.terminate()


def test_dropping_a_sink_with_undelivered_outputs_is_refused_until_discarded(
        procs, tmp_path):
    ins, outs = addrs(2), addrs(2)
    state = killed_with_undelivered_outputs(procs, tmp_path, ins, outs)
    w = procs("run", APP, "--in", ins, "--out", outs, "--resilience-dir", state,
              "--only-a")
    assert w.wait() == 1
    assert "holds outputs for sinks this application does not have" in w.stderr
    assert "sink 0 of pipeline 'b': 10 undelivered outputs" in w.stderr
    assert f"wallaroo recovery discard-outputs {state} --worker initializer " \
           f"--sink 'b:0'" in w.stderr
    assert "ready" not in w.stderr
    done = subprocess.run(WALLAROO + ["recovery", "discard-outputs", state,
                                      "--sink", "b:0"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert "discarded 10 undelivered outputs of sink 0 of pipeline 'b'" in done.stdout
    w = procs("run", APP, "--in", ins, "--out", outs, "--resilience-dir", state,
              "--only-a")
    w.wait_line(lambda line: line.startswith("ready"))
    w.terminate()
