"""What a checkpoint of one very large partition costs.

For each shape of state (``bytes``: one bytearray; ``dict``: millions of
small str -> str entries), a worker (`wallaroo run benchmarks/big_state_app.py
--resilience-dir`) gets pings for a small key at --ping-rate per second, then
one message that makes the key "big" about --mb megabytes (pickled).  The
periodic checkpoint then snapshots it.  Reported:

  snapshot work    the worker's longest snapshot work in one commit (pickling
                   on the event loop, splitting into rows), from its stop line
  commit           its longest commit (writing the rows, in a thread)
  ping stall       after one change to the big partition, the longest latency
                   of pings to another key while the next checkpoint snapshots
                   it, beside their p50/p99 before: the event loop reads and
                   processes nothing while it pickles
  busy             then every ping changes the big partition for
                   --busy-seconds: their latencies (it is snapshotted again at
                   every due checkpoint)
  peak memory      the worker's VmHWM: the state, its pickle and the rows
  database         bytes on disk (database and WAL) after the checkpoint
  restart          SIGKILL, then process start to `ready` (loading the snapshot)
  plain            the same state pickled and written as one row of a plain
                   SQLite table, in this process: the floor

    python benchmarks/bench_big_state.py --mb 500
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APP = os.path.join(HERE, "big_state_app.py")
sys.path.insert(0, HERE)
from big_state_app import build  # noqa: E402
from _machine import machine_line  # noqa: E402


def wallaroo(*args):
    return [sys.executable, "-m", "wallaroo.cli", *args]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(text: str) -> bytes:
    bs = text.encode()
    return struct.pack(">I", len(bs)) + bs


class Receiver(threading.Thread):
    """The sink's end: ping latencies by arrival, and the fill's answer."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.pings: list[tuple[int, int, bytes]] = []  # (arrived, latency ns, key)
        self.filled = threading.Event()

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buf = b""
            with conn:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    now = time.monotonic_ns()
                    for line in lines:
                        parts = line.split()
                        if parts[:1] == [b"ping"]:
                            self.pings.append((now, now - int(parts[3]), parts[1]))
                        elif parts[:1] == [b"filled"]:
                            self.filled.set()


class Worker:
    def __init__(self, port, out, state_dir):
        self.cmd = wallaroo("run", APP, "--in", f"127.0.0.1:{port}", "--out", out,
                            "--resilience-dir", state_dir,
                            "--checkpoint-interval", "1")
        self.lines: list[str] = []
        self.ready = threading.Event()

    def start(self) -> float:
        self.ready.clear()
        t0 = time.perf_counter()
        self.p = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, text=True,
                                  cwd=ROOT, stdout=subprocess.DEVNULL)
        threading.Thread(target=self._read, args=(self.p,), daemon=True).start()
        if not self.ready.wait(600):
            raise RuntimeError("no ready line:\n" + "".join(self.lines[-20:]))
        return time.perf_counter() - t0

    def _read(self, p):
        for line in p.stderr:
            self.lines.append(line)
            if line.startswith("ready"):
                self.ready.set()

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(600)

    def kill(self):
        self.p.kill()
        self.p.wait()


def big_snapshot_lsn(state_dir: str) -> int | None:
    """The lsn of the big partition's snapshot, once a checkpoint took one."""
    out = subprocess.run(wallaroo("recovery", "inspect", state_dir, "--json"),
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        return None
    info = json.loads(out.stdout)[0]
    for p in info["partitions"]:
        if "big" in p["key"]:
            return p["snapshot_lsn"]
    return None


def wait_snapshot_after(state_dir: str, lsn: int | None, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        now = big_snapshot_lsn(state_dir)
        if now is not None and (lsn is None or now > lsn):
            return now
        if time.monotonic() > deadline:
            raise RuntimeError("no checkpoint of the big partition")
        time.sleep(0.1)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def plain_floor(shape: str, mb: int, workdir: str) -> dict:
    """The same state pickled and written as one row, without the engine."""
    state = build(shape, mb)
    t0 = time.perf_counter()
    blob = pickle.dumps(state, 5)
    t1 = time.perf_counter()
    path = os.path.join(workdir, f"plain-{shape}.db")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE s (k TEXT PRIMARY KEY, v BLOB)")
    t2 = time.perf_counter()
    with db:
        db.execute("INSERT OR REPLACE INTO s VALUES ('big', ?)", (blob,))
    t3 = time.perf_counter()
    db.close()
    os.remove(path)
    return {"pickle_s": t1 - t0, "write_s": t3 - t2, "pickled_mb": len(blob) / 1e6}


def one_shape(shape: str, mb: int, rate: float, busy_seconds: float,
              workdir: str) -> dict:
    state_dir = os.path.join(workdir, f"state-{shape}")
    recv = Receiver()
    recv.start()
    port = free_port()
    w = Worker(port, recv.address, state_dir)
    w.start()
    sock = socket.create_connection(("127.0.0.1", port))
    stop_pings = threading.Event()
    target = ["small"]

    def pinger():
        gap = 1.0 / rate
        nxt = time.monotonic()
        while not stop_pings.is_set():
            sock.sendall(frame(f"ping {target[0]} {time.monotonic_ns()}"))
            nxt += gap
            time.sleep(max(0.0, nxt - time.monotonic()))

    t = threading.Thread(target=pinger, daemon=True)
    t.start()
    time.sleep(3)
    t_fill = time.monotonic_ns()
    sock.sendall(frame(f"fill big {shape} {mb}"))
    if not recv.filled.wait(900):
        raise RuntimeError("the fill message never came back")
    first = wait_snapshot_after(state_dir, None, 900)
    time.sleep(2)
    # one change to the big partition: a later checkpoint snapshots it
    # again, while the small key's pings wait behind it
    t_touch = time.monotonic_ns()
    sock.sendall(frame(f"ping big {t_touch}"))
    wait_snapshot_after(state_dir, first, 900)
    t_snap = time.monotonic_ns()
    time.sleep(2)
    t_busy = time.monotonic_ns()
    target[0] = "big"  # every ping changes the big partition
    time.sleep(busy_seconds)
    t_end = time.monotonic_ns()
    stop_pings.set()
    t.join()
    peak = w.peak_rss_mb()
    sock.close()
    w.stop()
    log = "".join(w.lines)
    m = re.search(r"(\d+) snapshots \((\d+) by checkpoints\); .*longest snapshot "
                  r"work in one commit ([0-9.]+) ms, longest commit ([0-9.]+) ms", log)
    if m is None:
        raise RuntimeError("no stop line:\n" + "".join(w.lines[-10:]))
    size = sum(os.path.getsize(os.path.join(state_dir, f))
               for f in os.listdir(state_dir) if ".db" in f)
    # by the time each ping was sent (a stalled worker answers late)
    small = [(arr - lat, lat) for arr, lat, key in recv.pings if key == b"small"]
    before = [lat for sent, lat in small if sent < t_fill]
    touched = [lat for sent, lat in small if t_touch <= sent < t_busy]
    busy = [lat for arr, lat, key in recv.pings
            if key == b"big" and t_busy <= arr - lat <= t_end]
    busy_sent = (t_end - t_busy) / 1e9 * rate
    w.start()  # a clean restart, then the timed one after SIGKILL
    w.kill()
    restart_s = w.start()
    rec = re.findall(r"recovered .* in ([0-9.]+)s", "".join(w.lines))
    w.stop()
    recv.sock.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "shape": shape, "mb": mb,
        "snapshot_work_s": float(m.group(3)) / 1000,
        "commit_s": float(m.group(4)) / 1000,
        "ping_p50_ms_before": pct(before, 0.5) / 1e6,
        "ping_p99_ms_before": pct(before, 0.99) / 1e6,
        "ping_max_ms_at_checkpoint": max(touched, default=0) / 1e6,
        "resnapshot_after_s": (t_snap - t_touch) / 1e9,
        "busy_pings": len(busy), "busy_sent": round(busy_sent),
        "busy_p50_ms": pct(busy, 0.5) / 1e6,
        "busy_p99_ms": pct(busy, 0.99) / 1e6,
        "snapshots": int(m.group(1)),
        "peak_rss_mb": peak,
        "database_mb": size / 1e6,
        "restart_to_ready_s": restart_s,
        "worker_recovery_s": float(rec[-1]) if rec else None,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=500,
                    help="size of the big partition, pickled (default 500)")
    ap.add_argument("--shapes", default="bytes,dict")
    ap.add_argument("--ping-rate", type=float, default=200.0)
    ap.add_argument("--busy-seconds", type=float, default=10.0,
                    help="how long pings change the big partition")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    print(f"command: python benchmarks/bench_big_state.py --mb {args.mb} "
          f"--shapes {args.shapes}")
    print(machine_line(with_sqlite=True), flush=True)
    workdir = tempfile.mkdtemp(prefix="wallaroo-bench-big-")
    rows = []
    try:
        for shape in args.shapes.split(","):
            plain = plain_floor(shape, args.mb, workdir)
            r = one_shape(shape, args.mb, args.ping_rate, args.busy_seconds, workdir)
            r["plain"] = plain
            rows.append(r)
            floor = plain["pickle_s"] + plain["write_s"]
            engine = r["snapshot_work_s"] + r["commit_s"]
            print(f"{shape:>5}, {plain['pickled_mb']:.0f} MB pickled: snapshot work "
                  f"{r['snapshot_work_s']:.2f}s + commit {r['commit_s']:.2f}s = "
                  f"{engine:.2f}s; plain pickle {plain['pickle_s']:.2f}s + one-row "
                  f"write {plain['write_s']:.2f}s = {floor:.2f}s ({engine / floor:.2f}x)",
                  flush=True)
            print(f"       pings to another key: p50 {r['ping_p50_ms_before']:.2f} ms, "
                  f"p99 {r['ping_p99_ms_before']:.2f} ms before; longest "
                  f"{r['ping_max_ms_at_checkpoint']:.0f} ms while it is checkpointed "
                  f"again (after one change, durable {r['resnapshot_after_s']:.1f}s later)",
                  flush=True)
            print(f"       pings changing it for {args.busy_seconds:g}s: "
                  f"{r['busy_pings']} of ~{r['busy_sent']} answered, p50 {r['busy_p50_ms']:.0f} ms, p99 "
                  f"{r['busy_p99_ms']:.0f} ms ({r['snapshots']} snapshots in the run)",
                  flush=True)
            print(f"       peak memory {r['peak_rss_mb']:.0f} MB; database "
                  f"{r['database_mb']:.0f} MB; SIGKILL -> ready "
                  f"{r['restart_to_ready_s']:.2f}s (the worker's recovery "
                  f"{r['worker_recovery_s']}s)", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
