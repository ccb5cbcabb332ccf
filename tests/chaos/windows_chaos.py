"""Chaos on windows: ``tests/apps/windows_app.py WINDOWS=second`` (tumbling
range windows of one second, keyed) under ``wallaroo run --workers 3
--resilience-dir --resumable-sinks``, fed by a resumable sender (``key,id``
messages, ids counting up per key), read by ``wallaroo receive
--resumable``.  Workers, the initializer among them, are SIGKILLed at random
moments, and all three at once as soon as the input is all sent (their
last windows still open); the supervisor restarts them.

Each window outputs ``key:ids`` (its messages in arrival order).  The model
of tumbling windows over ingest time, whatever the times were: each key's
messages are split into runs, in order, one run per window.  So the check
is: every output line once; per key, the windows' ids, concatenated in the
order they arrived, are exactly 0, 1, 2, ... (a missing id is a lost
update, a repeated one a double update), and each window's ids are
consecutive.  The last windows close by the clock (an idle worker's ticks).

    python -m tests.chaos.windows_chaos --messages 40000 --kills 10
"""

from __future__ import annotations

import os
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from .cluster_chaos import NAMES, chaos_main, kill_workers
from .run_chaos import Proc, free_port, wallaroo

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "apps", "windows_app.py")


@dataclass
class WindowsChaosResult:
    messages: int
    keys: int
    kills: list = field(default_factory=list)
    restart_to_ready_s: list = field(default_factory=list)
    windows: int = 0
    duplicate_windows: int = 0
    bad_windows: int = 0
    lost: int = 0
    duplicated: int = 0
    sender_exit: int | None = None
    supervisor_exit: int | None = None
    seconds: float = 0.0
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return (not (self.duplicate_windows or self.bad_windows or self.lost
                     or self.duplicated) and self.windows > 0
                and self.sender_exit == 0 and self.supervisor_exit == 0)

    def summary(self) -> str:
        return (f"{self.messages} messages over {self.keys} keys, 3 workers, "
                f"{len(self.kills)} SIGKILLs ({', '.join(self.kills)}); "
                f"{self.windows} windows: {self.lost} lost and "
                f"{self.duplicated} duplicated messages, "
                f"{self.duplicate_windows} duplicate and {self.bad_windows} bad "
                f"windows; restarts ready in "
                f"{max(self.restart_to_ready_s, default=0):.2f}s at most; "
                f"sender exit {self.sender_exit}, supervisor exit "
                f"{self.supervisor_exit}; {self.seconds:.1f}s "
                f"({'OK' if self.ok else 'FAILED'}; {self.workdir})")


def read_lines(path: str) -> list[str]:
    with open(path, "rb") as f:
        data = f.read()
    return data[:data.rfind(b"\n") + 1].decode().splitlines()


def check(lines: list[str], per_key: Counter, res: WindowsChaosResult) -> bool:
    """-> whether every message is in the outputs (the run may end)."""
    seen = Counter(lines)
    res.windows = len(seen)
    res.duplicate_windows = sum(n - 1 for n in seen.values())
    got: dict[str, list[int]] = {}
    bad = 0
    for line in seen:  # first arrival order of each distinct window
        key, ids = line.split(":", 1)
        run = [int(i) for i in ids.split(".")]
        if any(b != a + 1 for a, b in zip(run, run[1:])):
            bad += 1
        got.setdefault(key, []).extend(run)
    res.bad_windows = bad
    lost = duplicated = 0
    for key, n in per_key.items():
        ids = got.get(key, [])
        c = Counter(ids)
        duplicated += sum(v - 1 for v in c.values())
        lost += sum(1 for i in range(n) if i not in c)
    res.lost, res.duplicated = lost, duplicated
    # a key's windows arrive in order: out-of-order runs are bad windows too
    for key, ids in got.items():
        if ids != sorted(ids):
            res.bad_windows += 1
    return lost == 0


def run(messages: int = 8000, keys: int = 40, kills: int = 5, rate: int = 800,
        seed: int | None = None, workdir: str | None = None,
        say=print) -> WindowsChaosResult:
    rnd = random.Random(seed)
    workdir = workdir or tempfile.mkdtemp(prefix="wallaroo-windows-chaos-")
    state = os.path.join(workdir, "state")
    out = os.path.join(workdir, "received.bin")
    res = WindowsChaosResult(messages, keys, workdir=workdir)
    t0 = time.perf_counter()
    per_key: Counter = Counter()
    frames = os.path.join(workdir, "input.frames")
    with open(frames, "wb") as f:
        for _ in range(messages):
            k = f"k{rnd.randrange(keys)}"
            payload = f"{k},{per_key[k]}".encode()
            per_key[k] += 1
            f.write(struct.pack(">I", len(payload)) + payload)
    sink = free_port()
    receiver = Proc(wallaroo("receive", "--listen", f"127.0.0.1:{sink}", "--resumable",
                             "--framing", "lines", "--output", out),
                    os.path.join(workdir, "receiver.log"))
    sup = sender = None
    try:
        receiver.wait_for(r"^listening on", 30)
        sup = Proc(wallaroo("run", APP, "--in", "127.0.0.1:0", "--out",
                            f"127.0.0.1:{sink}", "--workers", "3", "--resilience-dir",
                            state, "--resumable-sinks", "--checkpoint-interval", "0.5",
                            "--restart-delay", "0.2", "WINDOWS=second"),
                   os.path.join(workdir, "supervisor.log"))
        ready = sup.wait_for(r"^ready workers=3 sources=(\S+)", 60)
        sender = Proc(wallaroo("send", ready.group(1), "--frames", frames,
                               "--resumable", "windows", "--rate", str(rate),
                               "--connect-timeout", "120", "--quiet"),
                      os.path.join(workdir, "sender.log"))
        targets = ["initializer"] + [rnd.choice(NAMES) for _ in range(kills - 1)]
        flow = messages / rate
        for who in targets:
            time.sleep(rnd.uniform(0.5, 1.3) * flow / (kills + 1))
            k0 = time.perf_counter()
            for w in kill_workers(sup, state, [who]):
                res.kills.append(w)
                say(f"SIGKILL {w} at {k0 - t0:.2f}s")
                res.restart_to_ready_s.append(time.perf_counter() - k0)
        res.sender_exit = sender.p.wait(timeout=300)
        # every worker at once, while the last windows are open: they must
        # fire after the restart (the schedule is rebuilt from the state)
        say(f"SIGKILL every worker at {time.perf_counter() - t0:.2f}s, the "
            f"input all sent")
        res.kills += kill_workers(sup, state, NAMES)
        deadline = time.monotonic() + 60  # the last windows close by the clock
        while time.monotonic() < deadline:
            if check(read_lines(out), per_key, res):
                break
            time.sleep(0.3)
        time.sleep(1.5)  # anything more would be a duplicate
        res.supervisor_exit = sup.stop(timeout=60)
        receiver.stop()
        check(read_lines(out), per_key, res)
        res.seconds = time.perf_counter() - t0
        return res
    finally:
        for p in (sender, sup, receiver):
            if p is not None:
                p.kill()


def main(argv=None) -> int:
    return chaos_main("tests.chaos.windows_chaos", __doc__,
                      {"messages": 40000, "keys": 100, "kills": 10, "rate": 2000},
                      run, argv)


if __name__ == "__main__":
    sys.exit(main())
