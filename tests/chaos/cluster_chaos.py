"""Chaos on a 3-worker cluster: ``cluster_app.py`` under ``wallaroo run
--workers 3 --resilience-dir --resumable-sinks``, fed by two resumable
senders (u64 values for the windows, votes for 1000 keys), outputs read by
``wallaroo receive --resumable``.  Workers are SIGKILLed at random moments
(the initializer, the worker holding the windows sender's connection and the
owner of its stream each at least once) and one is SIGSTOPped for a few
seconds; the supervisor restarts the killed ones.  Then every output is
checked: each window once, gap- and repeat-free; each (key, total) of the
votes once, and the last total of every key equal to its votes.

    python -m tests.chaos.cluster_chaos --messages 50000 --votes 50000 --kills 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from .run_chaos import Proc, free_port, wallaroo

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_app.py")
KEYS = 7
VOTE_KEYS = 1000
NAMES = ["initializer", "worker-1", "worker-2"]


@dataclass(kw_only=True)
class WindowsAndVotes:
    """What ``check`` finds in the outputs of ``cluster_app.py`` and how the
    senders and the supervisor ended (keyword fields: a run's own fields
    come first)."""

    lost_windows: int = 0
    duplicate_windows: int = 0
    bad_windows: int = 0
    lost_votes: int = 0
    duplicate_votes: int = 0
    wrong_totals: int = 0
    senders_exit: tuple = ()
    supervisor_exit: int | None = None
    seconds: float = 0.0
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return (not (self.lost_windows or self.duplicate_windows or self.bad_windows
                     or self.lost_votes or self.duplicate_votes or self.wrong_totals)
                and self.senders_exit == (0, 0) and self.supervisor_exit == 0)

    def outcome_lines(self, *between: str) -> list[str]:
        """The outputs' check, ``between``, then how the processes ended."""
        return [
            f"windows: lost {self.lost_windows}, duplicates {self.duplicate_windows}, "
            f"bad {self.bad_windows}; votes: lost {self.lost_votes}, duplicates "
            f"{self.duplicate_votes}, keys with a wrong final total {self.wrong_totals}",
            *between,
            f"senders exit {self.senders_exit}, supervisor exit {self.supervisor_exit}",
            f"verdict: {'PASS' if self.ok else 'FAIL'}  (logs in {self.workdir})"]


@dataclass
class ClusterChaosResult(WindowsAndVotes):
    messages: int
    votes: int
    kills: list[str] = field(default_factory=list)
    pauses: list[str] = field(default_factory=list)
    restart_to_ready_s: list[float] = field(default_factory=list)

    def summary(self) -> str:
        r = self.restart_to_ready_s
        rs = (f"min {min(r):.2f}s median {statistics.median(r):.2f}s max {max(r):.2f}s"
              if r else "-")
        return "\n".join([
            f"windows {self.messages}, votes {self.votes} over {VOTE_KEYS} keys, "
            f"3 workers; SIGKILLs {len(self.kills)} ({', '.join(self.kills)}), "
            f"SIGSTOPs {len(self.pauses)} ({', '.join(self.pauses)}), wall time "
            f"{self.seconds:.1f}s",
            *self.outcome_lines(f"kill -> the supervisor's 'ready again': {rs}")])


def vote_keys(n: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.randrange(VOTE_KEYS) for _ in range(n)]


def check(records: list[bytes], messages: int, keys: list[int], res) -> None:
    windows = [r for r in records if r[4:5] == b"W"]
    votes = [r for r in records if r[4:5] == b"V"]
    wc = Counter(windows)
    res.duplicate_windows = len(windows) - len(wc)
    last = Counter()
    for rec in wc:
        w = struct.unpack(">QQQQ", rec[5:])
        vals = [v for v in w if v]
        ok = bool(vals) and all(b - a == KEYS for a, b in zip(vals, vals[1:])) and \
            not any(w[:4 - len(vals)]) and (len(vals) == 4 or vals[0] <= KEYS)
        if not ok:
            res.bad_windows += 1
        last[w[-1]] += 1
    res.lost_windows = sum(1 for v in range(1, messages + 1) if last[v] == 0)
    res.duplicate_windows += sum(n - 1 for n in last.values() if n > 1)
    vc = Counter(votes)
    res.duplicate_votes = len(votes) - len(vc)
    totals: dict[int, set] = {}
    for rec in vc:
        key, total = struct.unpack(">HQ", rec[5:])
        totals.setdefault(key, set()).add(total)
    want = Counter(keys)
    for key, n in want.items():
        got = totals.get(key, set())
        res.lost_votes += len(set(range(1, n + 1)) - got)
        if max(got, default=0) != n or len(got) != n:
            res.wrong_totals += 1


def finish(res, senders, sup, receiver, out: str, keys: list[int], t0: float,
           timeout: float) -> None:
    """The end of a run: the senders done, every output arrived (and
    anything beyond it, a duplicate), the supervisor and the receiver
    stopped, the outputs checked into ``res``."""
    res.senders_exit = tuple(s.p.wait(timeout=timeout) for s in senders)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(read_frames(open(out, "rb").read())) >= res.messages + res.votes:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    res.supervisor_exit = sup.stop(timeout=60)
    receiver.stop()
    check(read_frames(open(out, "rb").read()), res.messages, keys, res)
    res.seconds = time.perf_counter() - t0


def read_frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if pos + 4 + n > len(data):
            break
        out.append(data[pos:pos + 4 + n])
        pos += 4 + n
    return out


def start_receiver(workdir: str, sink: int, out: str) -> Proc:
    """``wallaroo receive --resumable`` on ``sink``, writing ``out``."""
    return Proc(wallaroo("receive", "--listen", f"127.0.0.1:{sink}", "--resumable",
                         "--framing", "length", "--output", out),
                os.path.join(workdir, "receiver.log"))


def start_senders(workdir: str, sources: list[str], messages: int, keys: list[int],
                  rate: int, connect_timeout: int) -> list[Proc]:
    """The two resumable senders: u64 values 1..``messages`` (stream
    "seq") to ``sources[0]``, and one vote per entry of ``keys`` (stream
    "votes") to ``sources[1]``."""
    frames = os.path.join(workdir, "votes.frames")
    with open(frames, "wb") as f:
        for i, k in enumerate(keys):
            f.write(struct.pack(">IIH", 6, i, k))
    common = ("--rate", str(rate), "--connect-timeout", str(connect_timeout), "--quiet")
    return [
        Proc(wallaroo("send", sources[0], "--u64", str(messages), "--resumable", "seq",
                      *common), os.path.join(workdir, "sender-seq.log")),
        Proc(wallaroo("send", sources[1], "--frames", frames, "--resumable", "votes",
                      *common), os.path.join(workdir, "sender-votes.log"))]


def run(messages: int = 20000, votes: int = 20000, kills: int = 5, pauses: int = 1,
        rate: int = 4000, seed: int | None = None, workdir: str | None = None,
        say=print) -> ClusterChaosResult:
    from wallaroo.runtime.placement import Placement
    rnd = random.Random(seed)
    workdir = workdir or tempfile.mkdtemp(prefix="wallaroo-cluster-chaos-")
    state = os.path.join(workdir, "state")
    out = os.path.join(workdir, "received.bin")
    res = ClusterChaosResult(messages, votes, workdir=workdir)
    t0 = time.perf_counter()
    sink = free_port()
    receiver = start_receiver(workdir, sink, out)
    sup = senders = None
    try:
        receiver.wait_for(r"^listening on", 30)
        sup = Proc(wallaroo("run", APP, "--in", "127.0.0.1:0,127.0.0.1:0", "--out",
                            f"127.0.0.1:{sink}", "--workers", "3", "--resilience-dir",
                            state, "--resumable-sinks", "--checkpoint-interval", "0.5",
                            "--restart-delay", "0.2"),
                   os.path.join(workdir, "supervisor.log"))
        ready = sup.wait_for(r"^ready workers=3 sources=(\S+)", 60)
        sources = ready.group(1).split(",")
        keys = vote_keys(votes, rnd.randrange(1 << 30))
        senders = start_senders(workdir, sources, messages, keys, rate, 120)
        owner = NAMES[Placement(NAMES, NAMES[0]).owner_of_stream("windows", "seq")]
        targets = ["initializer", "holder", owner] + [
            rnd.choice(NAMES) for _ in range(max(0, kills - 3))]
        events = [("kill", t) for t in targets[:kills]] + [("pause", rnd.choice(NAMES))
                                                          for _ in range(pauses)]
        flow = max(messages, votes) / rate
        rnd.shuffle(events)
        for kind, who in events:
            time.sleep(rnd.uniform(0.4, 1.4) * flow / (len(events) + 1))
            holder = _holder(sup.lines, owner)
            if who == "holder":
                who = holder
            pid = _pid(state, who)
            if pid is None:
                continue
            if kind == "pause":
                os.kill(pid, signal.SIGSTOP)
                time.sleep(rnd.uniform(1.5, 3.0))
                os.kill(pid, signal.SIGCONT)
                res.pauses.append(who)
                continue
            seen = sum(1 for line in sup.lines if f"worker {who} ready again" in line)
            os.kill(pid, signal.SIGKILL)
            k0 = time.perf_counter()
            res.kills.append(who)
            roles = [r for r, w in (("holds the 'seq' sender's connection", holder),
                                    ("owns stream 'seq'", owner)) if w == who]
            say(f"SIGKILL {who} at {k0 - t0:.2f}s"
                + (f" ({', '.join(roles)})" if roles else ""))
            deadline = time.monotonic() + 60
            while sum(1 for line in sup.lines if f"worker {who} ready again"
                      in line) <= seen and time.monotonic() < deadline:
                time.sleep(0.02)
            res.restart_to_ready_s.append(time.perf_counter() - k0)
        finish(res, senders, sup, receiver, out, keys, t0, timeout=300)
        return res
    finally:
        for p in (senders or []) + [sup, receiver]:
            if p is not None:
                p.kill()


def _holder(lines: list[str], owner: str) -> str:
    """The worker holding the windows sender's connection, as last logged:
    the one that forwarded it to the owner, or the owner when it was handed
    the connection itself."""
    who = owner
    for line in lines:
        m = re.match(r"(\S+) \| .*stream 'seq' .*(forwarded to worker|resuming at)", line)
        if not m:
            continue
        by = re.search(r"connection forwarded by worker '([^']+)'", line)
        who = by.group(1) if by else m.group(1)
    return who


def kill_workers(sup, state: str, names: list[str], timeout: float = 60) -> list[str]:
    """SIGKILL the workers ``names`` of the supervisor ``sup`` at once and
    wait until it has logged each of them ready again; -> those killed."""
    def readies(who: str) -> int:
        return sum(1 for line in sup.lines if f"worker {who} ready again" in line)
    seen = {who: readies(who) for who in names}
    killed = []
    for who in names:
        pid = _pid(state, who)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(who)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(readies(w) <= seen[w] for w in killed):
        time.sleep(0.02)
    return killed


def _pid(state: str, name: str) -> int | None:
    try:
        with open(os.path.join(state, "cluster.json")) as f:
            for w in json.load(f)["workers"]:
                if w["name"] == name:
                    return w["pid"]
    except (OSError, ValueError):
        pass
    return None


def chaos_main(module: str, doc: str, options: dict[str, int], run_fn,
               argv=None) -> int:
    """The command line of a chaos run: ``options`` (name -> default) in
    the order ``run_fn`` takes them, then ``--seed`` and ``--json``; prints
    the command that repeats the run, and the run's summary."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name, default in options.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    values = [getattr(a, name) for name in options]
    flags = " ".join(f"--{n.replace('_', '-')} {v}" for n, v in zip(options, values))
    print(f"{module.rsplit('.', 1)[-1].replace('_', ' ')}: seed {seed}; command: "
          f"python -m {module} {flags} --seed {seed}")
    res = run_fn(*values, seed)
    print(res.summary())
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**asdict(res), "ok": res.ok, "seed": seed}, f, indent=2)
    return 0 if res.ok else 1


def main(argv=None) -> int:
    return chaos_main("tests.chaos.cluster_chaos", __doc__,
                      {"messages": 50000, "votes": 50000, "kills": 8, "pauses": 1,
                       "rate": 5000}, run, argv)


if __name__ == "__main__":
    sys.exit(main())
