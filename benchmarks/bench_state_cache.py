"""State larger than memory: peak RSS and throughput with ``--state-cache``.

A resilience directory with K keys of state (benchmarks/recovery_app.py: one
partition per u64 key) is built once and checkpointed.  Then, for each
configuration (all partitions in memory, and ``--state-cache N`` for each N
given), a worker is started on a copy of it and
  1. a hot set of H keys gets M messages (H distinct keys, repeated):
     messages per second until every one is acknowledged;
  2. every one of the K keys gets one message: seconds until all are
     acknowledged (each partition is loaded from the store; with a cache,
     the least recently used are snapshotted if dirty and dropped);
and the worker's peak resident memory (VmHWM) is read before it stops.

    python benchmarks/bench_state_cache.py --keys 1000000 --cache 100000
    python benchmarks/bench_state_cache.py --keys 10000000 --cache 100000 \\
        --hot 10000 --hot-messages 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_recovery import (APP, ROOT, free_port, wait_line,  # noqa: E402
                            wallaroo)
from bench_recovery import send_u64 as send  # noqa: E402
from _machine import machine_line  # noqa: E402


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


class Run:
    """A worker on ``state`` (with ``extra`` options) and a receiver."""

    def __init__(self, state: str, *extra: str):
        self.recv = subprocess.Popen(
            wallaroo("receive", "--listen", "127.0.0.1:0", "--output", os.devnull,
                     "--quiet"), stderr=subprocess.PIPE, text=True, cwd=ROOT)
        out = wait_line(self.recv, r"^listening on (\S+)", 30, []).group(1)
        self.port = free_port()
        t0 = time.perf_counter()
        self.w = subprocess.Popen(
            wallaroo("run", APP, "--in", f"127.0.0.1:{self.port}", "--out", out,
                     "--resilience-dir", state, *extra),
            stderr=subprocess.PIPE, text=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        self.lines: list[str] = []
        wait_line(self.w, r"^ready", 600, self.lines)
        self.ready_s = time.perf_counter() - t0

    def stop(self) -> str:
        self.w.terminate()
        err = self.w.communicate(timeout=600)[1]
        self.recv.kill()
        self.recv.wait()
        if self.w.returncode != 0:
            raise RuntimeError("".join(self.lines) + err)
        return "".join(self.lines) + err


def build(state: str, keys: int) -> dict:
    run = Run(state, "--checkpoint-interval", "0.2", "--checkpoint-max", "10000")
    feed = send(run.port, keys, "build")
    t0 = time.perf_counter()
    run.stop()  # a clean stop snapshots what the checkpoints have not
    size = sum(os.path.getsize(os.path.join(state, f)) for f in os.listdir(state))
    return {"feed_s": feed, "stop_s": time.perf_counter() - t0, "bytes": size}


def measure(base: str, work: str, keys: int, hot: int, hot_messages: int,
            cache: int | None) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    extra = [] if cache is None else ["--state-cache", str(cache)]
    run = Run(work, "--checkpoint-interval", "1", *extra)
    rss0 = status_kib(run.w.pid, "VmRSS")
    repeat = max(1, hot_messages // hot)
    hot_s = send(run.port, hot, "hot", repeat)
    rss_hot = status_kib(run.w.pid, "VmRSS")
    all_s = send(run.port, keys, "all")
    peak = status_kib(run.w.pid, "VmHWM")
    rss_end = status_kib(run.w.pid, "VmRSS")
    run.stop()
    return {"cache": cache, "ready_s": run.ready_s, "rss_start_mb": rss0 / 1024,
            "hot_msgs_per_s": hot * repeat / hot_s, "rss_after_hot_mb": rss_hot / 1024,
            "touch_all_s": all_s, "peak_rss_mb": peak / 1024,
            "rss_end_mb": rss_end / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--cache", default="100000",
                    help="comma-separated --state-cache sizes to compare with "
                         "no cache")
    ap.add_argument("--hot", type=int, default=10_000)
    ap.add_argument("--hot-messages", type=int, default=1_000_000)
    ap.add_argument("--no-unbounded", action="store_true",
                    help="only the --cache sizes, not the run without a cache")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    caches = ([] if args.no_unbounded else [None]) + [
        int(x) for x in args.cache.split(",") if x]
    print(f"command: python benchmarks/bench_state_cache.py --keys {args.keys} "
          f"--cache {args.cache} --hot {args.hot} --hot-messages {args.hot_messages}"
          + (" --no-unbounded" if args.no_unbounded else ""))
    print(machine_line())
    workdir = tempfile.mkdtemp(prefix="wallaroo-bench-cache-")
    try:
        base = os.path.join(workdir, "base")
        b = build(base, args.keys)
        print(f"built {args.keys} keys in {b['feed_s']:.1f}s (+{b['stop_s']:.1f}s "
              f"to stop); directory {b['bytes'] / 1e6:.0f} MB", flush=True)
        rows = []
        for cache in caches:
            r = measure(base, os.path.join(workdir, "run"), args.keys, args.hot,
                        args.hot_messages, cache)
            rows.append(r)
            label = "no cache" if cache is None else f"--state-cache {cache}"
            print(f"{label:>22}: ready in {r['ready_s']:.2f}s, RSS "
                  f"{r['rss_start_mb']:.0f} MB; hot set of {args.hot} keys "
                  f"{r['hot_msgs_per_s']:,.0f} msgs/s (RSS {r['rss_after_hot_mb']:.0f} MB); "
                  f"all {args.keys} keys once in {r['touch_all_s']:.1f}s; peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB, at the end {r['rss_end_mb']:.0f} MB",
                  flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"build": b, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
