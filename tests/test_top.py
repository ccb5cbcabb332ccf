"""``wallaroo top``: a live view of a cluster (from its directory) and of a
worker run with --metrics; its screen names every worker and shows the
messages flowing."""

from __future__ import annotations

import re
import subprocess
import threading

from .conftest import (REPO, WAIT, WALLAROO, send_all_and_close, start_receiver,
                       u64_frames)
from .test_cluster_examples import run_cluster

ALPHABET = REPO / "examples" / "alphabet_partitioned" / "alphabet_partitioned.py"
U64 = REPO / "tests" / "apps" / "u64_sum.py"


def test_top_of_a_3_worker_cluster_names_every_worker(procs, tmp_path):
    state = str(tmp_path / "state")
    sup, fields = run_cluster(procs, ALPHABET, 3, "--out", "127.0.0.1:9",
                              "--metrics", "127.0.0.1:0", resilience_dir=state)
    # from the directory (the workers' status answers), and from the
    # supervisor's --metrics address (the whole cluster's series)
    for where in ([state], ["--metrics", fields["metrics"]]):
        done = subprocess.run(WALLAROO + ["top", *where, "--interval", "0.5",
                                          "--iterations", "2"],
                              capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        for name in ("initializer", "worker-1", "worker-2"):
            assert re.search(rf"│ {name}\s+│ ready", done.stdout), done.stdout
        assert "in/s" in done.stdout and "p99" in done.stdout \
            and "loop stall" in done.stdout
    sup.terminate()


def test_top_of_a_worker_with_metrics_shows_messages_flowing(procs):
    rx, rx_port = start_receiver(procs, "--framing", "length")
    w = procs("run", str(U64), "--in", "127.0.0.1:0", "--out", f"127.0.0.1:{rx_port}",
              "--metrics", "127.0.0.1:0")
    ready = w.wait_line(lambda line: line.startswith("ready"))
    port = int(re.search(r"sources=[^:]+:(\d+)", ready).group(1))
    addr = re.search(r"metrics=(\S+)", ready).group(1)
    stop = threading.Event()

    def feed():
        v = 1
        while not stop.is_set():
            send_all_and_close(port, u64_frames(range(v, v + 2000)))
            v += 2000
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        done = subprocess.run(WALLAROO + ["top", "--metrics", addr, "--interval", "0.5",
                                          "--iterations", "3"],
                              capture_output=True, text=True, timeout=WAIT)
    finally:
        stop.set()
        t.join(10)
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"│ initializer\s+│ ready\s+│\s+([\d,]+) │.*?│\s+(\S+ ms|-) │"
                      r"\s+(\S+ ms|-) │", done.stdout)
    assert rows and max(int(r[0].replace(",", "")) for r in rows) > 0, done.stdout
    # the latency percentiles of an interval with outputs written
    assert any(p50 != "-" and p99 != "-" for _, p50, p99 in rows), done.stdout
    w.terminate()


def test_top_needs_one_source_of_figures():
    done = subprocess.run(WALLAROO + ["top"], capture_output=True, text=True,
                          timeout=WAIT)
    assert done.returncode == 2
    assert "give DIRECTORY, --control HOST:PORT" in done.stderr


def test_top_stops_politely_on_sigterm(procs):
    """Without --iterations it runs until stopped: SIGTERM ends it like
    Ctrl-C, exit status 0."""
    import signal
    import time
    w = procs("run", str(U64), "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
              "--metrics", "127.0.0.1:0")
    addr = re.search(r"metrics=(\S+)", w.wait_line(lambda line: line.startswith("ready"))
                     ).group(1)
    top = subprocess.Popen(WALLAROO + ["top", "--metrics", addr, "--interval", "0.2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    top.send_signal(signal.SIGTERM)
    out, err = top.communicate(timeout=WAIT)
    assert top.returncode == 0, err
    assert "initializer" in out
    w.terminate()
