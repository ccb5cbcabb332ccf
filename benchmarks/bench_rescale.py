"""Rescaling a running cluster on this host (``wallaroo cluster grow``).

Part 1, moving K keys of state: ``recovery_app.py`` (one partition per u64
key) on ``--workers 1 --resilience-dir``; K messages create K partitions;
then a paced probe sends every key again (``--probe-rate`` messages per
second, resumable) and, a few seconds in, ``wallaroo cluster grow`` takes
the cluster to 2 workers: half the key groups move to the new worker with
their state.  ``--from N`` starts with N workers instead and grows to N+1
(a third of the groups move from 2 to 3: recovery/ownership.py).  Reported: the grow command's time; the longest gap between two
outputs of the probe, for the keys that moved and for those that stayed;
the probe's outputs per second for the keys that stayed, while the grow ran
(the "other groups' throughput during the move"); and whether every key
counted exactly 2 (its state moved whole).

Part 2, throughput before and after growing: word count fed the same lines
at full speed on 1 worker, then again after ``wallaroo cluster grow`` to 2,
same supervisor and directory (lines per second: from the sender's start to
the last output at the receiver).  The sender and the receiver share the machine's cores
with the workers.

    python benchmarks/bench_rescale.py --keys 100000 --lines 20000

With ``--live``, part 1 moves key groups while the cluster runs instead
(``wallaroo cluster move``, docs/cluster.md "Moving key groups live"): on 2
workers, the initializer's 512 key groups go to worker-1 (half the keys),
and only their messages wait.

    python benchmarks/bench_rescale.py --live --keys 200000

With ``--grow-live``, both parts grow with ``wallaroo cluster grow --live``
(docs/cluster.md, "Growing while it runs"): the new worker joins with no
key groups and live moves give it its share; only the moving groups'
messages wait.

    python benchmarks/bench_rescale.py --grow-live --keys 100000
    python benchmarks/bench_rescale.py --shrink-live --keys 100000

With ``--hosts`` (root, iproute2), part 1 runs again over two network-
namespace hosts: a one-worker cluster formed with ``--cluster-initializer
--worker-count 1`` on the first, and a worker started on the second with
``wallaroo run APP --join``; the grow's time runs from the joiner's start to
its ``ready`` line (its copy of the giver's database crosses the hosts'
link).

    sudo python benchmarks/bench_rescale.py --keys 100000 --hosts
    sudo python benchmarks/bench_rescale.py --keys 100000 --hosts --grow-live
"""

from __future__ import annotations

import argparse
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import machine_line

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from wallaroo.recovery import ownership  # noqa: E402
from wallaroo.runtime.placement import stable_hash  # noqa: E402
from wallaroo.runtime.rescale import next_names  # noqa: E402

APP = REPO / "benchmarks" / "recovery_app.py"
WORD_COUNT = REPO / "examples" / "word_count" / "word_count.py"


def wallaroo(*args) -> list[str]:
    return [sys.executable, "-m", "wallaroo.cli", *map(str, args)]


class Receiver:
    """Records every output with its arrival time, over any number of
    connections: fixed-size records (``size``) or lines (size 0)."""

    def __init__(self, size: int, host: str = "127.0.0.1"):
        self.size = size
        self.records: list[tuple[float, bytes]] = []
        self.lock = threading.Lock()
        self.ls = socket.create_server((host, 0))
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            c, _ = self.ls.accept()
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        buf = b""
        while True:
            data = c.recv(1 << 20)
            if not data:
                return
            now = time.perf_counter()
            buf += data
            if self.size:
                n = len(buf) // self.size * self.size
                recs = [buf[i:i + self.size] for i in range(0, n, self.size)]
                buf = buf[n:]
            else:
                *recs, buf = buf.split(b"\n")
            with self.lock:
                self.records.extend((now, r) for r in recs)

    def count(self) -> int:
        with self.lock:
            return len(self.records)

    def wait(self, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.count()} of {n} outputs after {timeout}s")
            time.sleep(0.05)


def start_cluster(app: Path, state: Path, sink: int, log: Path, *extra,
                  workers: int = 1):
    sup = subprocess.Popen(wallaroo("run", app, "--in", "127.0.0.1:0", "--out",
                                    f"127.0.0.1:{sink}", "--workers", workers,
                                    "--resilience-dir", state, *extra),
                           stderr=subprocess.PIPE, text=True)
    logf = open(log, "w")
    for line in sup.stderr:
        logf.write(line)
        if line.startswith("ready "):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
            break
    else:
        raise RuntimeError(f"the cluster did not start (see {log})")
    threading.Thread(target=lambda: [logf.write(x) for x in sup.stderr],
                     daemon=True).start()
    return sup, fields["sources"]


GROW_ARGS: list[str] = []  # ["--live"] with --grow-live


def grow(state: Path) -> float:
    t = time.perf_counter()
    done = subprocess.run(wallaroo("cluster", "grow", state, *GROW_ARGS),
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(done.stdout + done.stderr)
    return time.perf_counter() - t


def shrink_live(state: Path) -> float:
    t = time.perf_counter()
    done = subprocess.run(wallaroo("cluster", "shrink", state, "--count", 1, "--live"),
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(done.stdout + done.stderr)
    return time.perf_counter() - t


def send(source: str, *args) -> None:
    done = subprocess.run(wallaroo("send", source, *args, "--quiet"),
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(done.stderr)


def moving_keys(keys: int, start: int = 1) -> dict[int, bool]:
    """Whether each key's group changes owner in a grow from ``start``
    workers (that never rescaled) to one more."""
    old = ownership.rule_owners(next_names(["initializer"], start - 1), 1024)
    new = ownership.balanced_owners(old, next_names(["initializer"], start))
    return {k: old[stable_hash(k) % 1024] != new[stable_hash(k) % 1024]
            for k in range(keys)}


def part1(keys: int, probe_rate: int, workdir: Path, start: int = 1) -> dict:
    recv = Receiver(20)  # >IQQ: length 16, key, count
    state = workdir / "state-keys"
    sup, source = start_cluster(APP, state, recv.port, workdir / "keys.log",
                                "--checkpoint-interval", "0.5", workers=start)
    try:
        grow_times = _probe_around(source, keys, probe_rate, recv,
                                   lambda: grow(state))
    finally:
        sup.terminate()
        sup.wait(120)
    return _moved(keys, probe_rate, recv, *grow_times, start=start)


def part1_shrink_live(keys: int, probe_rate: int, workdir: Path) -> dict:
    """Part 1 the other way: 1 worker grows live to 2, the keys are
    created, then worker-1 leaves with ``wallaroo cluster shrink --live``
    while every key is probed; the keys that move are those it had."""
    recv = Receiver(20)
    state = workdir / "state-keys"
    sup, source = start_cluster(APP, state, recv.port, workdir / "keys.log",
                                "--checkpoint-interval", "0.5", workers=1)
    try:
        grow(state)
        times = _probe_around(source, keys, probe_rate, recv,
                              lambda: shrink_live(state))
    finally:
        sup.terminate()
        sup.wait(120)
    return _moved(keys, probe_rate, recv, *times)


def live_move(state: Path, groups: str, taker: str) -> tuple[float, float]:
    """``wallaroo cluster move``: (command seconds, the moving groups' wait
    as it reports it)."""
    t = time.perf_counter()
    done = subprocess.run(wallaroo("cluster", "move", state, "--groups", groups,
                                   "--to", taker), capture_output=True, text=True,
                          timeout=900)
    if done.returncode:
        raise RuntimeError(done.stdout + done.stderr)
    took = time.perf_counter() - t
    waited = max(float(line.rsplit("waited ", 1)[1].rstrip("s"))
                 for line in done.stdout.splitlines() if "waited" in line)
    return took, waited


def part1_live(keys: int, probe_rate: int, workdir: Path) -> dict:
    """Part 1 with a live move: 2 workers; every key group of the
    initializer (0-511) moves to worker-1 while the cluster runs."""
    recv = Receiver(20)
    state = workdir / "state-live"
    sup, source = start_cluster(APP, state, recv.port, workdir / "live.log",
                                "--checkpoint-interval", "0.5", workers=2)
    waited = []

    def move() -> float:
        took, w = live_move(state, "0-511", "worker-1")
        waited.append(w)
        return took
    try:
        grow_times = _probe_around(source, keys, probe_rate, recv, move)
    finally:
        sup.terminate()
        sup.wait(120)
    moves = {k: stable_hash(k) % 1024 < 512 for k in range(keys)}
    r = _moved(keys, probe_rate, recv, *grow_times, moves=moves)
    r["waited_s"] = waited[0]
    return r


def part1_hosts(keys: int, probe_rate: int, workdir: Path, live: bool = False) -> dict:
    """Part 1 over two network-namespace hosts: the joiner's copy of the
    giver's database crosses the link between them.  ``live``: the joiner
    joins with ``--live`` (nothing stops; the grow's time runs from its
    start to the first member's ``grow --live by worker-1 done`` line)."""
    sys.path.insert(0, str(REPO))
    from tests.netns import BRIDGE_ADDR, Hosts
    hosts = Hosts(2)
    procs = []
    try:
        recv = Receiver(20, BRIDGE_ADDR)
        secret = workdir / "secret"
        secret.write_text("a cluster secret of enough length\n")
        secret.chmod(0o600)

        def args(i: int) -> list:
            me = hosts.address(i)
            base = ["run", APP, "--in", f"{me}:7000", "--out",
                    f"{BRIDGE_ADDR}:{recv.port}", "--resilience-dir",
                    workdir / f"host{i}", "--cluster-secret-file", secret,
                    "--checkpoint-interval", "0.5"]
            if i == 1:
                return base + ["--cluster-initializer", "--worker-count", 1,
                               "--control", f"{me}:7100", "--data", f"{me}:7101"]
            return base + ["--join", f"{hosts.address(1)}:7100", "--name",
                           "worker-1", "--my-control", f"{me}:7100", "--my-data",
                           f"{me}:7101"] + (["--live"] if live else [])

        grown = threading.Event()  # the first member's "grow --live ... done"

        def start(i: int) -> threading.Event:
            p = subprocess.Popen(hosts.run_in(i, wallaroo(*args(i))),
                                 stderr=subprocess.PIPE, text=True)
            procs.append(p)
            ready = threading.Event()
            logf = open(workdir / f"host{i}.log", "w")

            def pump():
                for line in p.stderr:
                    logf.write(line)
                    logf.flush()
                    if line.startswith("ready "):
                        ready.set()
                    if "grow --live by worker-1 done" in line:
                        grown.set()
            threading.Thread(target=pump, daemon=True).start()
            return ready

        if not start(1).wait(120):
            raise RuntimeError(f"the first host's worker did not start "
                               f"(see {workdir / 'host1.log'})")

        def join() -> float:
            t = time.perf_counter()
            ready = start(2)
            if not (grown if live else ready).wait(900):
                raise RuntimeError(f"the joiner did not become ready "
                                   f"(see {workdir / 'host2.log'})")
            return time.perf_counter() - t

        grow_times = _probe_around(f"{hosts.address(1)}:7000", keys, probe_rate,
                                   recv, join)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(120)
        hosts.close()
    return _moved(keys, probe_rate, recv, *grow_times)


def _probe_around(source: str, keys: int, probe_rate: int, recv: Receiver,
                  grow_fn) -> tuple[float, float, float]:
    """Create ``keys`` partitions, then probe every key while ``grow_fn``
    runs a few seconds in: (create seconds, grow start, grow seconds)."""
    t = time.perf_counter()
    send(source, "--u64", keys, "--start", 0, "--resumable", "create")
    recv.wait(keys)
    create_s = time.perf_counter() - t
    time.sleep(2)  # checkpoints settle
    probe = subprocess.Popen(wallaroo("send", source, "--u64", keys, "--start", 0,
                                      "--rate", probe_rate, "--resumable", "probe",
                                      "--connect-timeout", 300, "--quiet"))
    time.sleep(min(3.0, keys / probe_rate / 4))
    g0 = time.perf_counter()
    grow_s = grow_fn()
    probe.wait(timeout=900)
    recv.wait(2 * keys)
    return create_s, g0, grow_s


def _moved(keys: int, probe_rate: int, recv: Receiver, create_s: float, g0: float,
           grow_s: float, start: int = 1, moves: dict | None = None) -> dict:
    g1 = g0 + grow_s
    if moves is None:
        moves = moving_keys(keys, start)
    with recv.lock:
        probe_out = [(t, int.from_bytes(r[4:12], "big"), int.from_bytes(r[12:20], "big"))
                     for t, r in recv.records[keys:]]
    counts_ok = sorted(k for _, k, n in probe_out if n == 2) == list(range(keys))
    gaps = {True: 0.0, False: 0.0}
    last = {True: None, False: None}
    for t, k, _ in probe_out:
        m = moves[k]
        if last[m] is not None:
            gaps[m] = max(gaps[m], t - last[m])
        last[m] = t
    stayed_during = sum(1 for t, k, _ in probe_out if not moves[k] and g0 <= t <= g1)
    return {"keys": keys, "moved": sum(moves.values()), "create_s": create_s,
            "grow_s": grow_s, "gap_moved_s": gaps[True], "gap_stayed_s": gaps[False],
            "stayed_rate_during": stayed_during / grow_s,
            "probe_rate": probe_rate, "exact": counts_ok, "start": start}


def part2(lines: int, workdir: Path) -> dict:
    rnd = random.Random(7)
    vocab = ["".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=rnd.randint(3, 9)))
             for _ in range(5000)]
    text = workdir / "lines.txt"
    text.write_text("\n".join(" ".join(rnd.choices(vocab, k=6))
                              for _ in range(lines)) + "\n")
    recv = Receiver(0)
    state = workdir / "state-words"
    sup, source = start_cluster(WORD_COUNT, state, recv.port, workdir / "words.log")
    rates = []
    try:
        for step in ("1 worker", "2 workers"):
            if step == "2 workers":
                grow(state)
            before = recv.count()
            t0 = time.perf_counter()
            send(source, "--file", text)
            recv.wait(before + 6 * lines)
            with recv.lock:
                last = recv.records[-1][0]
            rates.append((step, lines / (last - t0)))
    finally:
        sup.terminate()
        sup.wait(120)
    return {"lines": lines, "rates": rates}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--probe-rate", type=int, default=5000)
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--hosts", action="store_true",
                    help="part 1 over two network-namespace hosts (--join), "
                         "instead of both parts on one host")
    ap.add_argument("--live", action="store_true",
                    help="part 1 with `wallaroo cluster move` on 2 workers: "
                         "the initializer's key groups move to worker-1 while "
                         "the others flow (instead of a grow)")
    ap.add_argument("--grow-live", action="store_true",
                    help="both parts grow with `wallaroo cluster grow --live` "
                         "(no stop: the new worker joins, then live moves give "
                         "it its share)")
    ap.add_argument("--shrink-live", action="store_true",
                    help="part 1 only: 1 worker grows live to 2, then the "
                         "keys are made and `wallaroo cluster shrink --live` "
                         "takes worker-1 away while every key is probed")
    ap.add_argument("--from", dest="start", type=int, default=1, metavar="N",
                    help="part 1 on one host: grow from N workers to N+1 "
                         "(default 1)")
    a = ap.parse_args(argv)
    if a.start < 1 or (a.hosts and a.start != 1):
        ap.error("--from takes a number of workers >= 1, on one host")
    if a.shrink_live and (a.hosts or a.live or a.start != 1):
        ap.error("--shrink-live is for one host, from 2 workers to 1")
    if a.grow_live or a.shrink_live:
        if a.live or (a.hosts and a.shrink_live):
            ap.error("--grow-live is a grow (not --live); --shrink-live is for "
                     "one host")
        GROW_ARGS.append("--live")
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="wallaroo-bench-rescale-"))
    if a.hosts:
        r = part1_hosts(a.keys, a.probe_rate, work, live=a.grow_live)
        print(f"moving state over two hosts: {r['keys']:,} keys created in "
              f"{r['create_s']:.1f}s; `wallaroo run APP --join"
              f"{' --live' if a.grow_live else ''}` 1 -> 2 workers "
              f"moved {r['moved']:,} of them in {r['grow_s']:.2f}s (the joiner's "
              f"start to " + ("the first member's `grow --live ... done` line)"
                              if a.grow_live else "its ready line)"))
    elif a.shrink_live:
        r = part1_shrink_live(a.keys, a.probe_rate, work)
        print(f"moving state live, shrinking: {r['keys']:,} keys created in "
              f"{r['create_s']:.1f}s on 2 workers (grown live from 1); `wallaroo "
              f"cluster shrink --live` 2 -> 1 workers moved the {r['moved']:,} "
              f"keys of worker-1 in {r['grow_s']:.2f}s (command to answer)")
    elif a.live:
        r = part1_live(a.keys, a.probe_rate, work)
        print(f"moving state live: {r['keys']:,} keys created in "
              f"{r['create_s']:.1f}s on 2 workers; `wallaroo cluster move` moved "
              f"the {r['moved']:,} keys of the initializer's 512 key groups to "
              f"worker-1 in {r['grow_s']:.2f}s (command to answer); the moving "
              f"groups' messages waited {r['waited_s']:.2f}s")
    else:
        r = part1(a.keys, a.probe_rate, work, a.start)
        print(f"moving state: {r['keys']:,} keys created in {r['create_s']:.1f}s; "
              f"`wallaroo cluster grow{' --live' if a.grow_live else ''}` "
              f"{a.start} -> {a.start + 1} workers moved "
              f"{r['moved']:,} of them in {r['grow_s']:.2f}s (command to answer)")
    print(f"  probe at {r['probe_rate']:,} msgs/s over every key: longest output "
          f"gap {r['gap_moved_s']:.2f}s for keys that moved, "
          f"{r['gap_stayed_s']:.2f}s for keys that stayed; keys that stayed "
          f"during the {'move' if a.live else 'shrink' if a.shrink_live else 'grow'}: "
          f"{r['stayed_rate_during']:,.0f} outputs/s")
    print(f"  every key counted exactly twice after the move: "
          f"{'yes' if r['exact'] else 'NO'}")
    if a.hosts or a.live or a.shrink_live:
        print(f"(logs in {work})")
        return 0 if r["exact"] else 1
    w = part2(a.lines, work)
    base = w["rates"][0][1]
    for step, rate in w["rates"]:
        print(f"word count, {w['lines']:,} lines of 6 words, {step}: "
              f"{rate:,.0f} lines/s ({rate / base:.2f}x)")
    print(f"(logs in {work})")
    return 0 if r["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
