"""While one worker of a cluster recovers, the others go on with the keys
they own (DESIGN.md §6: no global rollback).  This measures it.

    python benchmarks/bench_cluster_recovery.py --rate 60000 --seconds 12

Three workers (``--workers 3 --resilience-dir --resumable-sinks``) count
votes for 1000 keys, fed by two paced senders (the supervisor hands them to
two workers; the third holds no client connection, only its share of the
keys).  A receiver speaking the resumable sink protocol counts each worker's
outputs per 100 ms.  After a few seconds the third worker is SIGKILLed; the
supervisor restarts it after ``--restart-delay`` and it recovers from its
log.  Reported: every worker's outputs per second before the kill and while
the third is away, and how long it was away.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "tests" / "chaos" / "cluster_app.py"
BUCKET = 0.1


class Counter:
    """Accepts the workers' resumable sink connections, counts outputs per
    worker per 100 ms, ACKs every read."""

    def __init__(self):
        import socket
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.port = self.ls.getsockname()[1]
        self.held: dict[str, int] = defaultdict(int)
        self.buckets: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.t0 = time.monotonic()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            conn, _ = self.ls.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        while b"\n" not in buf:
            more = conn.recv(4096)
            if not more:
                return
            buf += more
        line, _, buf = buf.partition(b"\n")
        stream = line.split(b" ")[2].decode()
        worker = stream.rsplit(".", 1)[1]
        conn.sendall(b"HAVE %d\n" % self.held[stream])
        while True:
            n = 0
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                size = int.from_bytes(buf[:4], "big")
                buf = buf[4 + size:]
                n += 1
            if n:
                self.held[stream] += n
                self.buckets[worker][int((time.monotonic() - self.t0) / BUCKET)] += n
                try:
                    conn.sendall(b"ACK %d\n" % self.held[stream])
                except OSError:
                    return
            try:
                more = conn.recv(1 << 20)
            except OSError:
                return
            if not more:
                return
            buf += more

    def rate(self, worker: str, t_from: float, t_to: float) -> float:
        b = self.buckets[worker]
        lo, hi = int(t_from / BUCKET), int(t_to / BUCKET)
        return sum(b.get(i, 0) for i in range(lo, hi)) / max(t_to - t_from, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=60000, help="votes per second in all")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--kill-at", type=float, default=5.0)
    ap.add_argument("--restart-delay", type=float, default=2.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wallaroo-bench-cluster-recovery-"))
    try:
        return measure(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(a, work: Path) -> int:
    counter = Counter()
    py = [sys.executable, "-m", "wallaroo.cli"]
    sup = subprocess.Popen(py + ["run", str(APP), "--in", "127.0.0.1:0,127.0.0.1:0",
                                 "--out", f"127.0.0.1:{counter.port}", "--workers", "3",
                                 "--resilience-dir", str(work / "state"),
                                 "--resumable-sinks", "--restart-delay",
                                 str(a.restart_delay)],
                           stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    for line in sup.stderr:
        lines.append(line)
        if line.startswith("ready "):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
            break
    threading.Thread(target=lambda: lines.extend(sup.stderr), daemon=True).start()
    n = int(a.rate * a.seconds / 2)
    rnd = random.Random(1)
    senders = []
    for i in range(2):
        path = work / f"votes{i}.frames"
        path.write_bytes(b"".join(struct.pack(">IIH", 6, k, rnd.randrange(1000))
                                  for k in range(n)))
        senders.append(subprocess.Popen(py + ["send", fields["sources"].split(",")[1],
                                              "--frames", str(path), "--rate",
                                              str(a.rate // 2), "--quiet"]))
        time.sleep(0.2)  # the supervisor gives the second one to another worker
    start = time.monotonic() - counter.t0
    time.sleep(a.kill_at)
    victim = json.load(open(fields["cluster_file"]))["workers"][2]
    kill_t = time.monotonic() - counter.t0
    os.kill(victim["pid"], signal.SIGKILL)
    while not any("worker worker-2 ready again" in x for x in lines):
        time.sleep(0.02)
    back_t = time.monotonic() - counter.t0
    for s in senders:
        s.wait()
    time.sleep(1.0)
    sup.send_signal(signal.SIGTERM)
    sup.wait()
    report = {"rate": a.rate, "away_seconds": round(back_t - kill_t, 3)}
    print(f"3 workers, {a.rate} votes/s over 1000 keys; worker-2 SIGKILLed at "
          f"{kill_t - start:.1f}s, ready again {back_t - kill_t:.2f}s later "
          f"(--restart-delay {a.restart_delay})")
    print(f"command: python benchmarks/bench_cluster_recovery.py --rate {a.rate} "
          f"--seconds {a.seconds} --kill-at {a.kill_at} --restart-delay "
          f"{a.restart_delay}")
    for w in ("initializer", "worker-1", "worker-2"):
        before = counter.rate(w, kill_t - 2.0, kill_t)
        during = counter.rate(w, kill_t + 0.2, back_t)
        report[w] = {"before": round(before), "while_worker_2_away": round(during)}
        print(f"  {w:<12} outputs/s before the kill {before:>9,.0f}   while worker-2 "
              f"is away {during:>9,.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
