"""Chaos while a cluster over three network-namespace hosts grows and
shrinks (``tests/host_cluster.py``: the initializer and worker-1 form it,
worker-2 joins on a third host with ``wallaroo run APP --join`` and leaves
with ``wallaroo cluster shrink --control``), fed by resumable senders and
read by a resumable receiver.

First Wallaroo's own resilience-test sequence:

    Wait 2 s, Grow 1, Wait 2 s, Shrink 1, Wait 2 s, Crash 2, Wait 2 s,
    Recover 2, Wait 5 s

(Crash: SIGKILL of the initializer and worker-1; Recover: both started again
with their command lines).  Then ``MOVES`` more grows and shrinks, each with
a SIGKILL of a random participant (the coordinator, a giver or the taker)
at a random moment of the move, started again half a second later.  Every
output is checked: each window once, gap- and repeat-free; each (key,
total) of the votes once, and the last total of every key equal to its
votes.  Opt in: ``python -m pytest -m slow tests/chaos/test_host_rescale_chaos.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from ..host_cluster import Cluster
from ..netns import Hosts, can_make_hosts

why = can_make_hosts()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(why is not None, reason=why or "")]

MOVES = 6
TWO = "initializer, worker-1"


def members_now(c: Cluster) -> str | None:
    """The members, as the coordinator says when no rescale is under way."""
    q = c.shrink(2, "--query")
    if q.returncode != 0 or "in progress" in q.stdout:
        return None
    line = next((x for x in q.stdout.splitlines() if x.startswith("members: ")), "")
    return line[len("members: "):]


def wait_members(c: Cluster, want: str, timeout: float = 180) -> float:
    t0 = time.monotonic()
    while members_now(c) != want:
        assert time.monotonic() - t0 < timeout, (
            f"still not {want} after {timeout}s:\n" + "\n".join(
                f"--- host {i}\n" + w.stderr[-4000:] for i, w in c.workers.items()))
        time.sleep(0.3)
    return time.monotonic() - t0


def asked_lines(c: Cluster) -> int:
    return c.workers[1].stderr.count(" asked: ")


def kill_and_restart(c: Cluster, i: int, pause: float = 0.5) -> None:
    c.workers[i].signal(signal.SIGKILL)
    c.workers[i].wait()
    time.sleep(pause)
    c.start(i)


def test_the_resilience_sequence_and_kills_during_moves(procs, tmp_path):
    hosts = Hosts(3)
    try:
        # another sequence of kills: WALLAROO_CHAOS_SEED=N
        _run(procs, hosts, tmp_path,
             random.Random(int(os.environ.get("WALLAROO_CHAOS_SEED", 20261201))))
    finally:
        hosts.close()


def _run(procs, hosts, tmp_path, rnd: random.Random) -> None:
    c = Cluster(procs, hosts, tmp_path, messages=60000, votes=60000, rate=800)
    events = []
    c.start_two_and_send(2, after=2)  # Wait 2 s, then Grow 1
    c.start(3)
    events.append(f"grow in {wait_members(c, TWO + ', worker-2'):.1f}s")
    # Wait 2 s, Shrink 1
    time.sleep(2)
    shrunk = c.shrink(1, "--names", "worker-2")
    assert shrunk.returncode == 0, shrunk.stderr
    assert c.workers[3].wait(timeout=60) == 0
    events.append(shrunk.stdout.strip().splitlines()[-1])
    # Wait 2 s, Crash 2, Wait 2 s, Recover 2, Wait 5 s
    time.sleep(2)
    for i in (1, 2):
        c.workers[i].signal(signal.SIGKILL)
    for i in (1, 2):
        c.workers[i].wait()
    time.sleep(2)
    for i in (1, 2):
        c.start(i)
    for i in (1, 2):
        c.workers[i].wait_line(lambda line: line.startswith("ready"), timeout=60)
    time.sleep(5)
    # grows and shrinks, each with a SIGKILL at a random moment of the move;
    # the third host joins each time as a new worker (a retired worker's
    # database only delivers what it holds)
    for n in range(MOVES):
        growing = n % 2 == 0
        joiner = f"worker-{2 + (n + 2) // 2}"
        asked = asked_lines(c)
        if growing:
            c.names[3], c.states[3] = joiner, str(tmp_path / f"state3-{joiner}")
            c.start(3)
        else:
            shrink = subprocess.Popen(
                c.shrink_args(1, "--names", joiner), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while asked_lines(c) == asked:
            assert time.monotonic() < deadline, c.workers[1].stderr[-4000:]
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 1.5))
        victim = rnd.choice([1, 2, 3])
        if c.workers[victim].p.poll() is None:
            kill_and_restart(c, victim)
            events.append(f"{'grow' if growing else 'shrink'} {joiner}: SIGKILL "
                          f"host {victim}")
        if growing:
            wait_members(c, f"{TWO}, {joiner}")
        else:
            out, err = shrink.communicate(timeout=300)
            assert shrink.returncode == 0, err
            assert c.workers[3].wait(timeout=60) == 0
            wait_members(c, TWO)
    print("\n".join(events))
    c.check_all()
    for i in (1, 2):
        assert c.workers[i].terminate(timeout=60) == 0


LIVE_STEPS = 6


def key_group_counts(c: Cluster, via: int) -> list[int] | None:
    """Each worker's count of key groups, sorted (None: no answer now)."""
    import json
    from ..conftest import WALLAROO
    st = subprocess.run(WALLAROO + ["status", "--control", f"{c.hosts.address(via)}:7100",
                                    "--cluster-secret-file", str(c.secret), "--json"],
                        capture_output=True, text=True, timeout=60)
    if st.returncode != 0:
        return None
    try:
        return sorted(w["key_groups"] for w in json.loads(st.stdout)["workers"])
    except (ValueError, KeyError, TypeError):
        return None


def wait_counts(c: Cluster, want: list[int], timeout: float = 300) -> None:
    t0 = time.monotonic()
    while key_group_counts(c, 2) != want:
        assert time.monotonic() - t0 < timeout, (
            f"key groups not {want} after {timeout}s:\n" + "\n".join(
                f"--- host {i}\n" + w.stderr[-4000:] for i, w in c.workers.items()))
        time.sleep(0.5)


def test_live_grows_and_shrinks_over_hosts_with_kills(procs, tmp_path):
    """``--join ... --live`` and ``shrink --control ... --live``, one after
    the other, the third host joining each time as a new worker, each with
    a SIGKILL of a random worker (the first member, worker-1 which the
    senders feed, or the one joining or leaving) at a random moment, started
    again with its command line half a second later.  Every output exactly
    once; the first two workers' processes restart only when killed."""
    hosts = Hosts(3)
    try:
        _run_live(procs, hosts, tmp_path, random.Random(
            int(os.environ.get("WALLAROO_CHAOS_SEED", 20261203))))
    finally:
        hosts.close()


def wait_log(c: Cluster, i: int, text: str, timeout: float = 120) -> None:
    """Until host ``i``'s worker logs ``text``; every worker's log if not."""
    deadline = time.monotonic() + timeout
    while text not in c.workers[i].stderr:
        assert time.monotonic() < deadline, f"no {text!r} from host {i}:\n" + \
            "\n".join(f"--- host {j}\n" + w.stderr[-5000:]
                      for j, w in c.workers.items())
        time.sleep(0.1)


def _run_live(procs, hosts, tmp_path, rnd: random.Random) -> None:
    c = Cluster(procs, hosts, tmp_path, messages=40000, votes=40000, rate=800)
    c.start_two_and_send(2, after=2)
    events = []
    for n in range(LIVE_STEPS):
        growing = n % 2 == 0
        joiner = f"worker-{2 + (n + 2) // 2}"
        if growing:
            c.names[3], c.states[3] = joiner, str(tmp_path / f"state3-{joiner}")
            args = c.args(3) + ["--live"]
            c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
            mark = f"took {joiner}; nothing moved"
            wait_log(c, 1, mark)
        else:
            shrink = subprocess.Popen(
                c.shrink_args(rnd.choice([1, 2]), "--names", joiner, "--live"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_log(c, 3, "leaving the cluster while it runs")
        time.sleep(rnd.uniform(0.0, 1.5))
        victim = rnd.choice([1, 2, 3])
        if c.workers[victim].p.poll() is None:
            c.workers[victim].signal(signal.SIGKILL)
            c.workers[victim].wait()
            time.sleep(0.5)
            if victim == 3:
                c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
            else:
                c.start(victim)
            events.append(f"{'grow' if growing else 'shrink'} {joiner} live: "
                          f"SIGKILL host {victim}")
        if growing:
            wait_counts(c, [341, 341, 342])
        else:
            out, err = shrink.communicate(timeout=600)
            assert shrink.returncode == 0, out + err
            assert c.workers[3].wait(timeout=120) == 0, c.workers[3].stderr[-4000:]
            wait_counts(c, [512, 512])
        events.append(f"{'grew' if growing else 'shrank'}: {joiner}")
    print("\n".join(events))
    c.check_all()
    for i in (1, 2):
        assert c.workers[i].terminate(timeout=60) == 0
