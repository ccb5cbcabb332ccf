"""Recovery time after SIGKILL, against the size of the state.

For each size K: a worker (`wallaroo run benchmarks/recovery_app.py
--resilience-dir`) receives K messages with K distinct keys (K partitions),
from `wallaroo send --resumable` (so all K are durable when it exits); then
it is SIGKILLed and restarted, and we time the restart from process start to
(a) its source port accepting a TCP connection and (b) its `ready` log line.
Two situations per size:
  checkpointed  the checkpoints have snapshotted every partition: recovery
                loads K snapshots and replays nothing;
  log only      checkpoints never ran (--checkpoint-interval 1e9): recovery
                builds K partitions by replaying all K logged inputs.
Also reported: the worker's own account of its recovery; (checkpointed
runs) the longest stalls (batch compute, i.e. the event loop held; the
snapshot work of one commit; a commit) in three phases, each reported by
the worker on SIGUSR1: "creating", while it took the K messages that
create the K partitions and checkpointed them (at most --checkpoint-max
1000 per commit); "checkpointing", K more messages, one per key, with every
partition in memory, so that the only work besides the computation is
checkpointing 1000 snapshots per commit; "loading", the same after the
restart, each partition loaded from the store by its first message.  And
how long that last traffic takes until every message is acknowledged,
against the same traffic when the K partitions were created.  With
--creating-baselines, the creating phase is also run on a worker with
--resilience-dir but no checkpoints (--checkpoint-interval 1e9: what
logging the K new keys costs, without checkpoint work) and on one
without --resilience-dir (no log at all).

    python benchmarks/bench_recovery.py --sizes 10000,100000 --repeat 3
    python benchmarks/bench_recovery.py --sizes 100000,1000000,10000000 \
        --modes checkpointed
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from _machine import machine_line

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APP = os.path.join(HERE, "recovery_app.py")


def wallaroo(*args):
    return [sys.executable, "-m", "wallaroo.cli", *args]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc, pattern, timeout, sink):
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        sink.append(line)
        m = rx.search(line)
        if m:
            return m
    raise RuntimeError(f"no {pattern!r} line; got:\n{''.join(sink[-20:])}")


def send_u64(port: int, n: int, stream: str, repeat: int = 1) -> float:
    """``wallaroo send --u64 n --start 0 --resumable stream``: seconds until
    every message is acknowledged."""
    t0 = time.perf_counter()
    done = subprocess.run(wallaroo("send", f"127.0.0.1:{port}", "--u64", str(n),
                                   "--start", "0", "--repeat", str(repeat),
                                   "--resumable", stream, "--quiet"),
                          cwd=ROOT, capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return time.perf_counter() - t0


def progress(state) -> tuple[int, int]:
    """(next_lsn, replay_from) of the worker's database, read directly
    (``recovery inspect`` counts every partition: too slow to poll)."""
    import sqlite3
    conn = sqlite3.connect(f"file:{os.path.join(state, 'initializer.db')}?mode=ro",
                           uri=True)
    try:
        return conn.execute("SELECT next_lsn, replay_from FROM progress").fetchone()
    finally:
        conn.close()


def caught_up(state, n: int) -> None:
    """Until the worker has taken n messages and checkpointed them all."""
    deadline = time.monotonic() + 3600
    while progress(state) != (n, n):
        if time.monotonic() > deadline:
            raise RuntimeError(f"checkpoints did not reach lsn {n}")
        time.sleep(0.2)


def baseline_creating(k: int, state) -> dict:
    """The creating phase on a worker without checkpoints (``state``: its
    resilience directory) or without --resilience-dir (None)."""
    recv = subprocess.Popen(wallaroo("receive", "--listen", "127.0.0.1:0", "--output",
                                     os.devnull, "--quiet"),
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out = wait_line(recv, r"^listening on (\S+)", 30, []).group(1)
        w = Worker(free_port(), out, state, 1e9)
        w.start()
        t = send_u64(w.port, k, "keys")
        stalls = w.stalls()
        w.stop()
        return {**stalls, "feed_seconds": t}
    finally:
        recv.kill()
        recv.wait()


def accepting(port) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.05):
            return True
    except OSError:
        return False


STALLS = (r"longest batch compute ([0-9.]+) ms \((\d+) messages\), longest "
          r"snapshot work in one commit ([0-9.]+) ms, longest commit ([0-9.]+) ms")


class Worker:
    def __init__(self, port, out, state_dir, checkpoint_interval):
        self.cmd = wallaroo("run", APP, "--in", f"127.0.0.1:{port}", "--out", out,
                            *(("--resilience-dir", state_dir) if state_dir else ()),
                            "--checkpoint-interval", str(checkpoint_interval),
                            "--checkpoint-max", "1000")
        self.port = port
        self.lines = []

    def stalls(self) -> dict:
        """SIGUSR1: the worker's longest stalls since the last report."""
        self.p.send_signal(signal.SIGUSR1)
        m = wait_line(self.p, r"stalls since .*: " + STALLS, 60, self.lines)
        return {"batch_ms": float(m.group(1)), "batch_messages": int(m.group(2)),
                "snapshot_work_ms": float(m.group(3)), "commit_ms": float(m.group(4))}

    def start(self):
        """Start; return (seconds to port accepting, seconds to ready line)."""
        t0 = time.perf_counter()
        self.p = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                  stdout=subprocess.DEVNULL)
        while not accepting(self.port):
            if self.p.poll() is not None:
                raise RuntimeError("worker died:\n" + self.p.stderr.read())
            time.sleep(0.002)
        t_port = time.perf_counter() - t0
        wait_line(self.p, r"^ready", 60, self.lines)
        return t_port, time.perf_counter() - t0

    def kill(self):
        self.p.kill()
        self.p.wait()
        self.lines.extend(self.p.stderr.readlines())

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        out = self.p.communicate(timeout=60)[1]
        self.lines.extend(out.splitlines(True))
        return self.p.returncode


def one_size(k, mode, repeat, workdir):
    state = os.path.join(workdir, f"state-{k}-{mode}")
    recv = subprocess.Popen(wallaroo("receive", "--listen", "127.0.0.1:0", "--output",
                                     os.devnull, "--quiet"),
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out = wait_line(recv, r"^listening on (\S+)", 30, []).group(1)
        interval = 0.2 if mode == "checkpointed" else 1e9
        w = Worker(free_port(), out, state, interval)
        w.start()
        feed_s = send_u64(w.port, k, "keys")
        stalls = {}
        again_s = None
        if mode == "checkpointed":
            # wait until the incremental checkpoints have snapshotted every
            # partition (replay_from reaches next_lsn) before each report
            caught_up(state, k)
            stalls["creating"] = w.stalls()
            again_s = send_u64(w.port, k, "again")
            caught_up(state, 2 * k)
            stalls["checkpointing"] = w.stalls()
            w.stop()
            w.start()
        # "log only": killed without a clean stop, so nothing was checkpointed
        results = []
        for _ in range(repeat):
            w.kill()
            t_port, t_ready = w.start()
            results.append((t_port, t_ready))
        # every key once more: each message loads its partition
        touch_s = send_u64(w.port, k, "touch")
        if mode == "checkpointed":
            caught_up(state, 3 * k)
            stalls["loading"] = w.stalls()
        w.stop()
        log = "".join(w.lines)
        inside = [float(x) for x in re.findall(r"recovered .* in ([0-9.]+)s", log)]
        replayed = [int(x) for x in re.findall(r"replayed (\d+) inputs", log)]
        parts = [int(x) for x in re.findall(r"recovered (\d+) partitions", log)]
        return {
            "keys": k, "mode": mode, "feed_seconds": feed_s,
            "port_s": statistics.median(r[0] for r in results),
            "ready_s": statistics.median(r[1] for r in results),
            "port_all": [r[0] for r in results],
            "worker_recovery_s": statistics.median(inside[-repeat:]) if inside else None,
            "partitions": parts[-1] if parts else None,
            "replayed": replayed[-1] if replayed else None,
            "stalls": stalls,
            "again_seconds": again_s,
            "touch_all_s": touch_s,
            "db_bytes": sum(os.path.getsize(os.path.join(state, f))
                            for f in os.listdir(state)),
        }
    finally:
        recv.kill()
        recv.wait()


def baseline_start(repeat):
    """Python start-up and imports alone: `wallaroo --version`."""
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(wallaroo("--version"), capture_output=True, cwd=ROOT, check=True)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="checkpointed,log only")
    ap.add_argument("--creating-baselines", action="store_true",
                    help="also create the keys on a worker without checkpoints "
                    "and on one without --resilience-dir")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    print(f"command: python benchmarks/bench_recovery.py --sizes {args.sizes} "
          f"--repeat {args.repeat} --modes {args.modes!r}"
          + (" --creating-baselines" if args.creating_baselines else ""))
    print(machine_line())
    workdir = tempfile.mkdtemp(prefix="wallaroo-bench-recovery-")
    rows = []
    try:
        base = baseline_start(args.repeat)
        print(f"python start-up + imports (wallaroo --version): {base:.3f}s")
        for k in sizes:
            for mode in modes:
                r = one_size(k, mode, args.repeat, workdir)
                rows.append(r)
                print(f"{k:>8} keys, {mode:<12}: port accepting after {r['port_s']:.3f}s "
                      f"(runs {', '.join(f'{x:.3f}' for x in r['port_all'])}), ready line "
                      f"{r['ready_s']:.3f}s; worker's recovery {r['worker_recovery_s']:.3f}s "
                      f"({r['partitions']} partitions, {r['replayed']} inputs replayed)"
                      + f"; all {k} keys touched again in {r['touch_all_s']:.2f}s "
                        f"(created in {r['feed_seconds']:.2f}s); directory "
                        f"{r['db_bytes'] / 1e6:.0f} MB",
                      flush=True)
                if r["again_seconds"]:
                    print(f"{'':>8} every key again with all in memory: {k} messages "
                          f"in {r['again_seconds']:.2f}s ({k / r['again_seconds']:,.0f} "
                          f"msgs/s)", flush=True)
                for phase, st in r["stalls"].items():
                    print(f"{'':>8} {phase:<13} longest batch compute {st['batch_ms']} ms "
                          f"({st['batch_messages']} messages), snapshot work in one "
                          f"commit {st['snapshot_work_ms']} ms, commit "
                          f"{st['commit_ms']} ms", flush=True)
            if args.creating_baselines:
                for label, state in (("no checkpoints", os.path.join(workdir, f"nc-{k}")),
                                     ("no resilience", None)):
                    st = baseline_creating(k, state)
                    rows.append({"keys": k, "mode": label, **st})
                    print(f"{k:>8} keys, {label:<14}: created in {st['feed_seconds']:.2f}s; "
                          f"longest batch compute {st['batch_ms']} ms "
                          f"({st['batch_messages']} messages), commit "
                          f"{st['commit_ms']} ms", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(sizes) > 1:
        for mode in modes:
            a = next(r for r in rows if r["keys"] == sizes[0] and r["mode"] == mode)
            b = next(r for r in rows if r["keys"] == sizes[-1] and r["mode"] == mode)
            ka, kb = sizes[0], sizes[-1]
            print(f"{mode}: port accepting after {a['port_s']:.3f}s with {ka} keys, "
                  f"{b['port_s']:.3f}s with {kb} ({b['port_s'] / a['port_s']:.2f}x for "
                  f"{kb / ka:.0f}x the keys); touching every key again "
                  f"{a['touch_all_s'] / ka * 1e6:.1f} vs "
                  f"{b['touch_all_s'] / kb * 1e6:.1f} us per key")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline_start_s": base, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
