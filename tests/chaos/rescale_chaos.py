"""Chaos while a one-host cluster grows and shrinks: ``cluster_app.py`` under
``wallaroo run --workers 2 --resilience-dir --resumable-sinks``, fed by two
resumable senders (u64 values for the sequence windows, votes for 1000
keys), read by ``wallaroo receive --resumable``.

First Wallaroo's own resilience-test sequence:

    Wait 2 s, Grow 1, Wait 2 s, Shrink 1, Wait 2 s, Crash 2, Wait 2 s,
    Recover 2, Wait 5 s

(Grow/Shrink: ``wallaroo cluster grow/shrink``; Crash: SIGKILL of two
workers; Recover: the supervisor's restart, ``--restart-delay 2``).  Then
``--moves`` more grows and shrinks, each with a SIGKILL at a random moment
of the move: of a worker of the cluster being drained (a giver or a taker),
or of the supervisor itself (which then runs again with its command line
and finishes the move its plan file records).  Every output is checked:
each window once, gap- and repeat-free; each (key, total) of the votes
once, and the last total of every key equal to its votes.

    python -m tests.chaos.rescale_chaos --messages 20000 --votes 20000 --moves 4
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from .cluster_chaos import (WindowsAndVotes, chaos_main, finish, start_receiver,
                            start_senders, vote_keys)
from .run_chaos import ROOT, Proc, free_port, wallaroo

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_app.py")


@dataclass
class RescaleChaosResult(WindowsAndVotes):
    messages: int
    votes: int
    events: list[str] = field(default_factory=list)
    rescale_seconds: list[float] = field(default_factory=list)

    def summary(self) -> str:
        r = self.rescale_seconds
        return "\n".join([
            f"windows {self.messages}, votes {self.votes}; events: "
            f"{'; '.join(self.events)}; wall time {self.seconds:.1f}s",
            f"rescales that completed: {len(r)}, each "
            + (f"{min(r):.2f}-{max(r):.2f}s" if r else "-"),
            *self.outcome_lines()])


class Cluster:
    """The supervisor, restartable with the same sources and directory."""

    def __init__(self, workdir: str, sink: int, sources: list[int]):
        self.workdir, self.sink, self.sources = workdir, sink, sources
        self.state = os.path.join(workdir, "state")
        self.sup: Proc | None = None
        self.workers = 2
        self.extra: tuple[str, ...] = ()  # more options of the workers

    def start(self) -> None:
        self.sup = Proc(wallaroo(
            "run", APP, "--in", ",".join(f"127.0.0.1:{p}" for p in self.sources),
            "--out", f"127.0.0.1:{self.sink}", "--workers", str(self.workers),
            "--resilience-dir", self.state, "--resumable-sinks",
            "--checkpoint-interval", "0.5", "--restart-delay", "2", *self.extra),
            os.path.join(self.workdir, "supervisor.log"))
        self.sup.wait_for(r"^ready workers=", 120)

    def members(self) -> list[dict]:
        try:
            with open(os.path.join(self.state, "cluster.json")) as f:
                return json.load(f)["workers"]
        except (OSError, ValueError):
            return []

    def rescale(self, op: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(wallaroo("cluster", op, self.state, *args),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT)


def run(messages: int = 20000, votes: int = 20000, moves: int = 4, rate: int = 1500,
        seed: int | None = None, workdir: str | None = None,
        say=print) -> RescaleChaosResult:
    rnd = random.Random(seed)
    workdir = workdir or tempfile.mkdtemp(prefix="wallaroo-rescale-chaos-")
    out = os.path.join(workdir, "received.bin")
    res = RescaleChaosResult(messages, votes, workdir=workdir)
    t0 = time.perf_counter()
    sink = free_port()
    receiver = start_receiver(workdir, sink, out)
    c = Cluster(workdir, sink, [free_port(), free_port()])
    senders: list[Proc] = []

    def event(text: str) -> None:
        res.events.append(text)
        say(f"{time.perf_counter() - t0:6.2f}s {text}")

    def rescale(op: str, *args: str, kill: bool = False) -> None:
        t = time.perf_counter()
        proc = c.rescale(op, *args)
        if kill:
            time.sleep(rnd.uniform(0.05, 1.2))
            victims = [w for w in c.members() if w.get("pid")]
            if rnd.random() < 0.3 or not victims:
                event(f"{op} {' '.join(args)}: SIGKILL the supervisor mid-move")
                c.sup.kill()
                c.sup.p.wait(30)
                proc.wait(60)
                time.sleep(0.5)  # its workers notice and stop
                c.start()
                return
            w = rnd.choice(victims)
            event(f"{op} {' '.join(args)}: SIGKILL {w['name']} ({w['state']}) "
                  f"mid-move")
            try:
                os.kill(w["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            event(f"{op} {' '.join(args)}")
        text, _ = proc.communicate(timeout=300)
        if proc.returncode == 0:
            res.rescale_seconds.append(time.perf_counter() - t)
            c.workers = len(text.split("(")[-1].split(","))
        else:
            event(f"{op} answered: {text.strip()}")
            c.workers = len([w for w in c.members()])

    try:
        receiver.wait_for(r"^listening on", 30)
        c.start()
        keys = vote_keys(votes, rnd.randrange(1 << 30))
        senders = start_senders(workdir, [f"127.0.0.1:{p}" for p in c.sources],
                                messages, keys, rate, 300)
        # Wallaroo's sequence
        time.sleep(2)
        rescale("grow", "--count", "1")
        time.sleep(2)
        rescale("shrink", "--count", "1")
        time.sleep(2)
        names = [w["name"] for w in c.members()]
        victims = rnd.sample(names, min(2, len(names)))
        for w in c.members():
            if w["name"] in victims and w.get("pid"):
                os.kill(w["pid"], signal.SIGKILL)
        event(f"crash {', '.join(victims)}")
        time.sleep(2)
        for name in victims:  # the supervisor restarts them after 2 s
            c.sup.wait_for(rf"worker {name} ready again", 60)
        event(f"recovered {', '.join(victims)}")
        time.sleep(5)
        # grows and shrinks with a SIGKILL of a party during each move
        for _ in range(moves):
            if c.workers <= 1 or (c.workers < 3 and rnd.random() < 0.5):
                rescale("grow", "--count", "1", kill=True)
            else:
                rescale("shrink", "--count", "1", kill=True)
            time.sleep(rnd.uniform(0.5, 2.0))
        finish(res, senders, c.sup, receiver, out, keys, t0, timeout=600)
        return res
    finally:
        for p in senders + [c.sup, receiver]:
            if p is not None:
                p.kill()


def main(argv=None) -> int:
    return chaos_main("tests.chaos.rescale_chaos", __doc__,
                      {"messages": 20000, "votes": 20000, "moves": 4, "rate": 1500},
                      run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
