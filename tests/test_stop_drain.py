"""A clean stop keeps what was accepted, and a slow application cannot hold
the worker: real processes, a decoder that sleeps per message.

With ``--resilience-dir``, SIGTERM with a drain too short to process what was
read logs the rest as pending input: the stop line says how many wait, and
the next start processes them first (every input gets its output, exactly
once).  Without it, the stop line counts the dropped messages and the exit
status is 3.  Batches are cut by time, so a resumable handshake is answered,
ACKs keep coming and the drain timeout is kept while the application is
slow.
"""

from __future__ import annotations

import re
import signal
import socket
import time

from .conftest import (APPS, WAIT, connect, send_all_and_close, start_receiver,
                       start_worker, sums, u64_frames)

SLOW = APPS / "slow_sum.py"


def stopped_line(proc) -> str:
    return proc.wait_line(lambda line: "stopped:" in line)


def messages_in(line: str) -> int:
    return int(re.search(r"stopped: (\d+) messages in", line).group(1))


def test_sigterm_logs_what_it_could_not_process_and_the_restart_processes_it(
        procs, tmp_path):
    n = 1500
    state = str(tmp_path / "state")
    out = tmp_path / "out.bin"
    recv, sink = start_receiver(procs, "--framing", "length", "--output", out)
    w, port = start_worker(procs, SLOW, "--resilience-dir", state,
                           "--drain-timeout", "0.3", "--delay-ms", "1",
                           out_port=sink)
    send_all_and_close(port, u64_frames(range(1, n + 1)))
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    took = time.monotonic() - t0
    line = stopped_line(w)
    done = messages_in(line)
    m = re.search(r"; (\d+) messages read but not processed are logged and wait "
                  r"for the next start", line)
    assert m, line
    assert done + int(m.group(1)) == n, line
    assert done < n  # the drain really was too short
    assert took < 0.3 + 2.0, f"SIGTERM took {took:.1f}s with --drain-timeout 0.3"
    # the restart processes the pending input first, then stops cleanly
    w2, _ = start_worker(procs, SLOW, "--resilience-dir", state, "--delay-ms", "0",
                         out_port=sink)
    w2.wait_line(f"{n - done} messages read before the last stop wait to be "
                 f"processed first")
    deadline = time.monotonic() + WAIT
    while len(sums(out.read_bytes() if out.exists() else b"")) < n:
        assert time.monotonic() < deadline, "outputs missing"
        time.sleep(0.05)
    assert w2.terminate() == 0
    recv.terminate()
    got = sums(out.read_bytes())
    values = [v for v, _ in got]
    assert sorted(set(values)) == list(range(1, n + 1)), "an input has no output"
    for v, s in got:
        assert s == v * (v + 1) // 2, f"value {v}: sum {s} (lost or doubled update)"


def test_without_resilience_the_stop_line_counts_the_dropped_messages(procs):
    n = 1500
    w, port = start_worker(procs, SLOW, "--drain-timeout", "0.3", "--delay-ms", "1")
    send_all_and_close(port, u64_frames(range(1, n + 1)))
    w.signal(signal.SIGTERM)
    assert w.wait() == 3  # stopped, but accepted messages were dropped
    line = stopped_line(w)
    m = re.search(r"; (\d+) accepted messages were not processed and are DROPPED "
                  r"\(no --resilience-dir\)", line)
    assert m, line
    assert messages_in(line) + int(m.group(1)) == n


def test_a_clean_drain_without_resilience_exits_0(procs):
    recv, sink = start_receiver(procs, "--framing", "length", "--expect", "100")
    w, port = start_worker(procs, SLOW, "--delay-ms", "0", out_port=sink)
    send_all_and_close(port, u64_frames(range(1, 101)))
    assert recv.wait() == 0
    assert w.terminate() == 0
    line = stopped_line(w)
    assert messages_in(line) == 100 and "DROPPED" not in line and "no resilience" in line


def test_a_slow_application_answers_handshakes_and_acks_and_keeps_the_drain_timeout(
        procs, tmp_path):
    """1 ms per message and 5000 messages queued: a new resumable
    connection is answered within a second, ACKs keep coming, and SIGTERM
    with --drain-timeout 1 returns within about a second."""
    w, port = start_worker(procs, SLOW, "--resilience-dir", str(tmp_path / "s"),
                           "--drain-timeout", "1", "--delay-ms", "1")
    plain = connect(port)
    plain.sendall(u64_frames(range(1, 5001)))
    time.sleep(0.2)  # the worker is busy with them
    s = connect(port)
    t0 = time.monotonic()
    s.sendall(b"WALLAROO-RESUME 1 slow-1\n")
    assert _line(s) == b"RESUME 0\n"
    answered = time.monotonic() - t0
    assert answered < 1.0, f"handshake answered after {answered:.2f}s"
    s.sendall(u64_frames(range(10**6, 10**6 + 50)))
    t0 = time.monotonic()
    acks = []
    while not acks or acks[-1] < 50:
        acks.append(int(_line(s).split()[1]))
    assert time.monotonic() - t0 < 2.0, "ACKs paused behind the slow backlog"
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    took = time.monotonic() - t0
    assert took < 1.0 + 1.5, f"SIGTERM took {took:.1f}s with --drain-timeout 1"
    line = stopped_line(w)
    m = re.search(r"longest batch compute ([0-9.]+) ms", line)
    assert m and float(m.group(1)) < 200, line  # cut by --max-batch-time
    plain.close()
    s.close()


def test_a_second_signal_ends_the_drain_at_once(procs, tmp_path):
    w, port = start_worker(procs, SLOW, "--resilience-dir", str(tmp_path / "s"),
                           "--drain-timeout", "30", "--delay-ms", "2")
    send_all_and_close(port, u64_frames(range(1, 3001)))
    w.signal(signal.SIGINT)
    w.wait_line("received SIGINT")
    t0 = time.monotonic()
    w.signal(signal.SIGINT)
    assert w.wait() == 0
    assert time.monotonic() - t0 < 3.0
    w.wait_line("received SIGINT again: ending the drain now")
    assert "wait for the next start" in stopped_line(w)


def test_a_second_signal_ends_the_wait_for_an_unreachable_sink(procs, tmp_path):
    """Everything is processed; the drain waits for a sink that is not
    there.  A second SIGTERM ends that wait at once (it used to keep the
    whole --drain-timeout)."""
    w, port = start_worker(procs, APPS / "u64_sum.py", "--resilience-dir",
                           str(tmp_path / "s"), "--drain-timeout", "30")
    send_all_and_close(port, u64_frames(range(1, 101)))
    w.wait_line("cannot connect")
    w.signal(signal.SIGTERM)
    w.wait_line("received SIGTERM")
    time.sleep(0.5)  # into the wait for the sink
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    assert time.monotonic() - t0 < 5.0, w.stderr
    line = stopped_line(w)
    assert "stopped: 100 messages in, 100 outputs" in line, line
    w.wait_line("received SIGTERM again: ending the drain now")


def test_time_stopped_by_sigstop_is_not_counted_as_compute(procs, tmp_path):
    w, port = start_worker(procs, SLOW, "--delay-ms", "1", "--drain-timeout", "0.5")
    s = connect(port)
    s.sendall(u64_frames(range(1, 3001)))
    time.sleep(0.3)
    w.signal(signal.SIGSTOP)
    time.sleep(1.0)
    w.signal(signal.SIGCONT)
    time.sleep(0.3)
    s.close()
    w.signal(signal.SIGTERM)
    w.wait()
    m = re.search(r"longest batch compute ([0-9.]+) ms", stopped_line(w))
    assert float(m.group(1)) < 500, "the SIGSTOP was counted as compute"


def _line(s: socket.socket) -> bytes:
    buf = b""
    s.settimeout(WAIT)
    while not buf.endswith(b"\n"):
        b = s.recv(1)
        assert b, f"closed after {buf!r}"
        buf += b
    return buf


def test_sigusr1_reports_the_longest_stalls_and_measures_afresh(procs, tmp_path):
    """One phase of a long run at a time: SIGUSR1 logs the longest stalls
    so far and starts again from nothing; the stop line covers what came
    after the last report."""
    recv, sink = start_receiver(procs, "--framing", "length", "--expect", "3")
    w, port = start_worker(procs, SLOW, "--delay-ms", "1", out_port=sink)
    send_all_and_close(port, u64_frames(range(1, 4)))
    assert recv.wait() == 0  # the three were computed and delivered
    w.signal(signal.SIGUSR1)
    first = w.wait_line("stalls since the start: longest batch compute")
    m = re.search(r"compute ([0-9.]+) ms \((\d+) messages\)", first)
    assert float(m.group(1)) > 0 and int(m.group(2)) >= 1, first
    w.signal(signal.SIGUSR1)  # nothing happened since
    last = w.wait_line("stalls since the last report")
    assert "compute 0.0 ms (0 messages)" in last and "longest commit 0.0 ms" in last
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    assert "longest batch compute 0.0 ms (0 messages)" in stopped_line(w)
