"""Chaos while key groups move live: ``cluster_app.py`` under ``wallaroo run
--workers 3 --resilience-dir --resumable-sinks``, fed by two resumable
senders (u64 values for the sequence windows, votes for 1000 keys), read
by ``wallaroo receive --resumable``.  ``wallaroo cluster move`` moves
random ranges of key groups to random workers while input flows; during
most moves a party is SIGKILLed at a random moment (the giver, the taker,
a bystander; the supervisor restarts it after ``--restart-delay``), or
the move command itself is killed and run again (it finishes the move it
finds under way).  Every output is checked: each window once, gap- and
repeat-free; each (key, total) of the votes once, and the last total of
every key equal to its votes.

    python -m tests.chaos.live_move_chaos --messages 20000 --votes 20000 --moves 6
    python -m tests.chaos.live_move_chaos --moves 15 --state-cache 20
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

from wallaroo.recovery import ownership

from .cluster_chaos import (WindowsAndVotes, chaos_main, finish, start_receiver,
                            start_senders, vote_keys)
from .rescale_chaos import Cluster
from .run_chaos import ROOT, Proc, free_port, wallaroo

KEY_GROUPS = 1024


@dataclass
class LiveMoveChaosResult(WindowsAndVotes):
    messages: int
    votes: int
    events: list[str] = field(default_factory=list)
    moves_done: int = 0
    grows_done: int = 0
    shrinks_done: int = 0
    waits: list[float] = field(default_factory=list)  # the groups' pauses

    def summary(self) -> str:
        w = self.waits
        return "\n".join([
            f"windows {self.messages}, votes {self.votes}; events: "
            f"{'; '.join(self.events)}; wall time {self.seconds:.1f}s",
            f"moves that completed: {self.moves_done}; live grows that "
            f"completed: {self.grows_done}; live shrinks that completed: "
            f"{self.shrinks_done}; moving groups waited "
            + (f"{min(w):.3f}-{max(w):.3f}s" if w else "-"),
            *self.outcome_lines()])


def half_move(state: str, groups: list[int], taker: str) -> str:
    """Only the switches of a live move (its command killed before the
    hand-over) in the one-host cluster of ``state``: returns the giver."""
    from wallaroo.connectors.auth import load_secret
    with open(os.path.join(state, "cluster.json")) as f:
        workers = json.load(f)["workers"]
    addresses = {w["name"]: (w["control"].rpartition(":")[0],
                             int(w["control"].rpartition(":")[2])) for w in workers}
    return half_move_at(addresses, load_secret(os.path.join(state, "cluster.secret")),
                        groups, taker)


def half_move_at(addresses: dict[str, tuple[str, int]], secret: bytes,
                 groups: list[int], taker: str) -> str:
    """``half_move`` for the workers at these control addresses (in
    member order) and the cluster's secret."""
    import trio

    from wallaroo.runtime.live_coordinator import Coordinator
    c = Coordinator(addresses, secret, 60)

    async def switches() -> str:
        st = await c.statuses()
        owners = ownership.decode(st[taker]["owners"], KEY_GROUPS, list(addresses))
        giver = next((owners[g] for g in groups if owners[g] != taker), None)
        if giver is None:
            raise RuntimeError(f"{taker} owns every one of those groups")
        gs = [g for g in groups if owners[g] == giver]
        epoch = 1 + max([int(e) for s in st.values() for e in s["switched"]] + [0])
        for w in addresses:
            if w != giver:
                await c.ask(w, "LIVE_SWITCH", {"epoch": epoch, "groups": gs,
                                               "giver": giver, "taker": taker})
        return giver
    return trio.run(switches)


def run(messages: int = 20000, votes: int = 20000, moves: int = 6, rate: int = 1500,
        state_cache: int = 0, grows: int = 0, shrinks: int = 0,
        seed: int | None = None, workdir: str | None = None, say=print,
        then_grow: bool = False, workers: int = 3) -> LiveMoveChaosResult:
    """``state_cache``: the workers' ``--state-cache`` (0: none), so moved
    partitions go from store to store without being loaded; ``grows``:
    that many ``wallaroo cluster grow --live`` among the moves, most with
    a worker SIGKILLed during the grow; ``shrinks``: that many ``wallaroo
    cluster shrink --live --count 1`` (a grow first when no member that
    joined live is left), most with a worker SIGKILLed during the shrink
    (the leaving one, another, or the initializer); ``then_grow``: after the moves,
    one is left half done (switched, never handed over) and ``wallaroo
    cluster grow`` runs: it finishes the move before it drains."""
    rnd = random.Random(seed)
    workdir = workdir or tempfile.mkdtemp(prefix="wallaroo-live-move-chaos-")
    out = os.path.join(workdir, "received.bin")
    res = LiveMoveChaosResult(messages, votes, workdir=workdir)
    t0 = time.perf_counter()
    sink = free_port()
    receiver = start_receiver(workdir, sink, out)
    c = Cluster(workdir, sink, [free_port(), free_port()])
    c.workers = workers
    if state_cache:
        c.extra = ("--state-cache", str(state_cache))
    senders: list[Proc] = []

    def event(text: str) -> None:
        res.events.append(text)
        say(f"{time.perf_counter() - t0:6.2f}s {text}")

    def kill(w: dict, why: str) -> None:
        event(why)
        try:
            os.kill(w["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass

    def move(kill_one: bool) -> None:
        names = [w["name"] for w in c.members()]
        taker = rnd.choice(names)
        first = rnd.randrange(KEY_GROUPS)
        last = min(KEY_GROUPS - 1, first + rnd.randrange(50, 400))
        args = ("--groups", f"{first}-{last}", "--to", taker, "--step",
                str(rnd.choice([16, 64, 256])))
        what = f"move {first}-{last} to {taker}"
        cmd = wallaroo("cluster", "move", c.state, *args)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        if kill_one:
            time.sleep(rnd.uniform(0.0, 0.1))  # moves of little state are quick
            victims = [w for w in c.members() if w.get("pid")]
            if rnd.random() < 0.25:
                event(f"{what}: SIGKILL the move command; run it again")
                proc.kill()
                proc.wait(30)
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            elif victims:
                # the taker, or another worker (a giver or a bystander)
                mine = [w for w in victims if w["name"] == taker]
                others = [w for w in victims if w["name"] != taker]
                w = rnd.choice(mine if mine and (rnd.random() < 0.4 or not others)
                               else others)
                role = "the taker" if w["name"] == taker else "a giver or bystander"
                kill(w, f"{what}: SIGKILL {w['name']} ({role}) mid-move")
        else:
            event(what)
        finish_move(proc, what)

    def finish_move(proc, what: str) -> None:
        text, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            event(f"{what} failed: {text.strip()}")
            return
        for line in text.splitlines():
            if "their messages waited" in line:
                res.moves_done += 1
                res.waits.append(float(line.rsplit("waited ", 1)[1].rstrip("s")))
        say("        " + text.strip().replace("\n", "\n        "))

    def grow(kill_one: bool) -> None:
        cmd = wallaroo("cluster", "grow", c.state, "--live")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        what = f"grow --live to {c.workers + 1} workers"
        if kill_one:
            time.sleep(rnd.uniform(0.0, 1.0))
            victims = [w for w in c.members() if w.get("pid")]
            if victims:
                w = rnd.choice(victims)
                kill(w, f"{what}: SIGKILL {w['name']} during it")
        else:
            event(what)
        text, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            event(f"{what} failed: {text.strip()}")
            return
        c.workers += 1
        res.grows_done += 1
        say("        " + text.strip())

    def shrink(kill_one: bool) -> None:
        if c.workers <= workers:  # only members that joined live leave live
            grow(kill_one=False)
        cmd = wallaroo("cluster", "shrink", c.state, "--count", "1", "--live")
        what = f"shrink --live to {c.workers - 1} workers"
        leaving = (c.members() or [{"name": None}])[-1]["name"]
        for attempt in range(3):  # one that stopped goes on from there
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            if kill_one and attempt == 0:
                time.sleep(rnd.uniform(0.0, 1.5))
                victims = [w for w in c.members() if w.get("pid")]
                if victims:
                    w = rnd.choice(victims)
                    role = ("the leaving one" if w["name"] == leaving
                            else "the initializer" if w["name"] == "initializer"
                            else "another")
                    kill(w, f"{what}: SIGKILL {w['name']} ({role}) during it")
            elif attempt == 0:
                event(what)
            text, _ = proc.communicate(timeout=900)
            if proc.returncode == 0:
                c.workers -= 1
                res.shrinks_done += 1
                say("        " + text.strip())
                return
            event(f"{what} failed: {text.strip()}")
            time.sleep(1.0)

    try:
        receiver.wait_for(r"^listening on", 30)
        c.start()
        keys = vote_keys(votes, rnd.randrange(1 << 30))
        senders = start_senders(workdir, [f"127.0.0.1:{p}" for p in c.sources],
                                messages, keys, rate, 300)
        time.sleep(2)
        move(kill_one=False)
        steps = ["move"] * (moves + grows)
        for i in rnd.sample(range(moves + grows), grows):  # (as before shrinks)
            steps[i] = "grow"
        for _ in range(shrinks):
            steps.insert(rnd.randrange(len(steps) + 1), "shrink")
        for step in steps:
            time.sleep(rnd.uniform(0.3, 1.5))
            if step == "grow":
                grow(kill_one=rnd.random() < 0.7)
            elif step == "shrink":
                shrink(kill_one=rnd.random() < 0.7)
            else:
                move(kill_one=rnd.random() < 0.8)
        if then_grow:
            taker = rnd.choice([w["name"] for w in c.members()])
            groups = list(range(KEY_GROUPS))  # some are another worker's
            giver = half_move(c.state, groups, taker)
            event(f"half a move of {giver}'s groups to {taker}, then grow")
            done = subprocess.run(wallaroo("cluster", "grow", c.state),
                                  capture_output=True, text=True, timeout=600,
                                  cwd=ROOT)
            event(f"grow: {(done.stdout + done.stderr).strip()}")
            c.workers += 1
        finish(res, senders, c.sup, receiver, out, keys, t0, timeout=600)
        return res
    finally:
        for p in senders + [c.sup, receiver]:
            if p is not None:
                p.kill()


def main(argv=None) -> int:
    return chaos_main("tests.chaos.live_move_chaos", __doc__,
                      {"messages": 20000, "votes": 20000, "moves": 6, "rate": 1500,
                       "state_cache": 0, "grows": 0, "shrinks": 0},
                      run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
