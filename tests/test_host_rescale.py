"""Rescaling a running cluster over several real "hosts" (network namespaces,
``tests/netns.py``): a worker on a new host joins with ``wallaroo run APP
--join``, a worker leaves with ``wallaroo cluster shrink --control``, while
resumable senders keep sending and a resumable receiver reads; then the
coordinator and a joiner are SIGKILLed in the middle of a move and
restarted with their command lines.  Every output arrives exactly once
(the sequence-window validator and the vote totals), and the workers
restart into the new membership with their original command lines."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tarfile
import time

import pytest
import trio

from wallaroo.connectors.auth import load_secret
from wallaroo.runtime.control import ask, ask_verb

from .chaos.live_move_chaos import half_move_at
from .conftest import REPO, WAIT, WALLAROO
from .host_cluster import Cluster
from .netns import can_make_hosts

why = can_make_hosts()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")
HOSTS_FIXTURES = REPO / "tests" / "fixtures" / "upgrade_hosts"


def _ready_again(worker, after: int, timeout: float = 120) -> None:
    """The worker's ``ready`` line number ``after + 1`` (a re-exec keeps
    the process and its stderr)."""
    deadline = time.monotonic() + timeout
    while worker.stderr.count("\nready ") + worker.stderr.startswith("ready ") <= after:
        assert worker.p.poll() is None, worker.stderr[-3000:]
        assert time.monotonic() < deadline, worker.stderr[-3000:]
        time.sleep(0.1)


def _readies(worker) -> int:
    return worker.stderr.count("\nready ") + worker.stderr.startswith("ready ")


def test_a_host_joins_and_another_leaves_while_data_flows(procs, hosts, tmp_path):
    c = Cluster(procs, hosts, tmp_path, messages=5000, votes=5000, rate=1000)
    c.start_two_and_send(2, after=1.5)
    # a third host joins through worker-1's control port (passed on)
    joiner = c.procs(*(a if a != f"{hosts.address(1)}:7100" else
                       f"{hosts.address(2)}:7100" for a in c.args(3)),
                     prefix=hosts.run_in(3, []))
    c.workers[3] = joiner
    line = c.workers[1].wait_line(lambda l: " done: 2 -> 3 workers" in l, timeout=120)
    assert "initializer, worker-1, worker-2" in line
    joiner.wait_line(lambda line: line.startswith("ready"), timeout=120)
    assert "took " in joiner.stderr and "partitions from initializer, worker-1" \
        in joiner.stderr
    for i in (1, 2):
        _ready_again(c.workers[i], 1)
    st = subprocess.run(WALLAROO + ["status", "--control", f"{hosts.address(3)}:7100",
                                    "--cluster-secret-file", str(c.secret), "--json"],
                        capture_output=True, text=True, timeout=WAIT)
    assert st.returncode == 0, st.stderr
    time.sleep(1.0)
    q = c.shrink(3, "--query")
    assert q.returncode == 0, q.stderr
    assert "members: initializer, worker-1, worker-2" in q.stdout
    assert "may leave: worker-1, worker-2" in q.stdout
    # worker-1's host leaves; the senders talk to it: they reconnect to
    # another worker (their streams forwarded to the new owners)
    shrunk = c.shrink(2, "--names", "worker-1")
    assert shrunk.returncode == 0, shrunk.stderr
    assert "rescaled in" in shrunk.stdout and "initializer, worker-2" in shrunk.stdout
    assert c.workers[2].wait(timeout=60) == 0
    assert "retired: every output this worker held is delivered" in c.workers[2].stderr
    for s in c.senders:
        s.kill()
    c.send(3)  # resumable senders again, to the third host: they resume
    c.check_all()
    ins = subprocess.run(WALLAROO + ["recovery", "inspect", c.state(2)],
                         capture_output=True, text=True, timeout=WAIT)
    assert ins.returncode == 0, ins.stderr
    assert "retired at" in ins.stdout
    # the leaver started again with its command line: nothing to deliver
    again = c.procs(*c.args(2), prefix=hosts.run_in(2, []))
    assert again.wait(timeout=WAIT) == 0
    assert "left its cluster in a rescale" in again.stderr
    # both stay members after a restart with their original command lines
    # (the initializer's --worker-count 2 no longer binds)
    for i in (1, 3):
        assert c.workers[i].terminate(timeout=60) == 0
    for w in c.workers.values():
        print("\n".join(line for line in w.stderr.splitlines()
                        if "rescale" in line or "took " in line or "retired" in line))
    for i in (3, 1):
        c.start(i)
    for i in (1, 3):
        c.workers[i].wait_line(lambda line: line.startswith("ready"), timeout=60)
    assert "rejoining the cluster of initializer, worker-2" in c.workers[1].stderr
    for i in (1, 3):
        assert c.workers[i].terminate(timeout=60) == 0


KILL, TERM = signal.SIGKILL, signal.SIGTERM


@pytest.mark.parametrize("victim,when,sig", [
    # the coordinator, before or after its check (opt in: -m slow)
    pytest.param(1, "waiting in move mode", KILL, marks=pytest.mark.slow),
    # the coordinator, the plan past its point of no return
    (1, "moving key groups", KILL),
    pytest.param(2, "waiting in move mode", KILL, marks=pytest.mark.slow),  # a giver
    (3, "copied initializer's database", KILL),  # the joiner, in its take
    # a polite stop of a giver waiting in move mode: it says what waits
    pytest.param(2, "waiting in move mode", TERM, marks=pytest.mark.slow),
])
def test_a_kill_in_the_middle_of_a_move(procs, hosts, tmp_path, victim, when, sig):
    c = Cluster(procs, hosts, tmp_path, messages=4000, votes=4000, rate=1000)
    c.start_two_and_send(2, after=1.0)
    c.start(3)
    c.workers[victim].wait_line(when, timeout=120)
    c.workers[victim].signal(sig)
    code = c.workers[victim].wait()
    if sig == TERM:
        assert code == 0
        assert "in move mode: rescale" in c.workers[victim].stderr
    if victim == 3:  # the others wait for it in move mode, and say so
        st = subprocess.run(WALLAROO + [
            "status", "--control", f"{hosts.address(2)}:7100", "--cluster-secret-file",
            str(c.secret), "--json"], capture_output=True, text=True, timeout=WAIT)
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert [w["state"] for w in status["workers"]] == ["rescale", "rescale"]
        assert status["rescale"]["to"] == ["initializer", "worker-1", "worker-2"]
    c.start(victim)  # with its own command line: it finds its plan file
    c.grown_and_checked(timeout=180)


def _kill_the_coordinator_in_the_drain(c: Cluster, asked: str, frozen: int) -> None:
    """Once the coordinator logged ``asked`` (host ``frozen`` is stopped
    by SIGSTOP, so the drain cannot end): SIGKILL it, let the frozen host
    go on, start the coordinator again and wait for it to abandon the
    plan."""
    c.workers[1].wait_line(asked, timeout=60)
    time.sleep(0.5)
    c.workers[1].signal(KILL)
    c.workers[1].wait()
    c.workers[frozen].signal(signal.SIGCONT)
    c.start(1)
    c.workers[1].wait_line("abandoned: the coordinator stopped before the drain "
                           "was done", timeout=30)


def test_a_coordinator_killed_in_the_drain_abandons_the_rescale_at_once(
        procs, hosts, tmp_path):
    """The coordinator is SIGKILLed before every member was told to stop
    (worker-1 is frozen, so the drain cannot get past it): started again,
    it abandons the plan at once instead of the members waiting
    GIVE_UP (60 s) for word from it; the joiner asks again and the grow
    happens, every output once."""
    c = Cluster(procs, hosts, tmp_path, messages=3000, votes=3000, rate=1000)
    c.start_two_and_send(1, after=1.0)
    c.workers[2].signal(signal.SIGSTOP)
    c.start(3)
    _kill_the_coordinator_in_the_drain(c, " asked: 2 workers", frozen=2)
    c.grown_and_checked(timeout=180)
    assert "no word from the coordinator" not in c.workers[2].stderr


def test_a_shrink_abandoned_in_the_drain_is_asked_again(procs, hosts, tmp_path):
    """`wallaroo cluster shrink --control` waits while the coordinator is
    SIGKILLed in the drain (the leaver is frozen, so the drain cannot
    end): the rescale is abandoned, the command says so and asks again
    (it used to wait for a rescale that no longer existed until its 600 s
    ran out), and the shrink happens; every output once."""
    c = Cluster(procs, hosts, tmp_path, messages=3000, votes=3000, rate=1000)
    c.start_two_and_send(1, after=1.0)
    c.start(3)
    c.workers[1].wait_line(lambda l: " done: 2 -> 3 workers" in l, timeout=120)
    for i in (1, 2, 3):
        c.workers[i].wait_line(lambda line: line.startswith("ready"), timeout=120)
    c.workers[3].signal(signal.SIGSTOP)
    shrink = subprocess.Popen(c.shrink_args(2, "--names", "worker-2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_the_coordinator_in_the_drain(c, " asked: 3 workers", frozen=3)
    out, err = shrink.communicate(timeout=240)
    assert shrink.returncode == 0, err
    assert "abandoned: the cluster runs as before; asking again" in err
    assert "rescaled in" in out and "2 workers (initializer, worker-1)" in out
    assert c.workers[3].wait(timeout=60) == 0
    c.check_all()
    for i in (1, 2):
        assert c.workers[i].terminate(timeout=60) == 0


def test_a_member_down_at_the_start_abandons_the_rescale_until_it_is_back(
        procs, hosts, tmp_path):
    """worker-1 is down when the joiner asks: the drain cannot reach it, the
    plan is abandoned after WALLAROO_RESCALE_GIVE_UP seconds (every worker
    starts again as it was, the joiner asks again); once worker-1 is back the
    rescale happens."""
    c = Cluster(procs, hosts, tmp_path, messages=3000, votes=3000, rate=1000)
    env = {"WALLAROO_RESCALE_GIVE_UP": "2"}
    c.start_two_and_send(1, after=1.0, env=env)
    c.workers[2].signal(signal.SIGKILL)
    c.workers[2].wait()
    c.start(3, env)
    c.workers[1].wait_line("abandoned", timeout=60)
    assert " done: " not in c.workers[1].stderr
    c.start(2, env)
    c.grown_and_checked(timeout=120)


@pytest.mark.parametrize("version", sorted(p.name for p in HOSTS_FIXTURES.iterdir()
                                           if p.is_dir()))
def test_a_cluster_of_an_earlier_release_grows_like_any_other(procs, hosts,
                                                              tmp_path, version):
    """DESIGN.md §4.8 on several hosts: the directories of a two-host
    cluster made by an earlier release (tests/fixtures/make_hosts_upgrade_dir.py:
    input logs to replay, outputs waiting in both outboxes, streams 'seq'
    at 2000 and 'votes' complete, the receiver's file) start again with
    their command lines and deliver what waits; a third host joins with
    --join; the senders resume, and every output arrives exactly once."""
    with tarfile.open(HOSTS_FIXTURES / version / "dirs.tar.gz") as t:
        t.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter")
                                  else {}))
    c = Cluster(procs, hosts, tmp_path, messages=3000, votes=2000, rate=1000)
    for i in (1, 2):
        c.start(i)
    requeued = 0
    for i in (1, 2):
        line = c.workers[i].wait_line(lambda l: "re-queued" in l, timeout=60)
        requeued += int(re.search(r"re-queued (\d+) undelivered", line).group(1))
        c.workers[i].wait_line(lambda line: line.startswith("ready"), timeout=60)
    assert requeued > 0  # outputs of the earlier release waited in the outboxes
    c.start(3)
    c.send(1)
    c.grown_and_checked(timeout=180)
    assert "resumed at message 2000" in c.senders[0].stderr


def test_key_groups_move_live_between_hosts(procs, hosts, tmp_path):
    """``wallaroo cluster move --control`` against a cluster over two
    hosts, while resumable senders feed worker-1: a quarter of the key
    groups goes from the initializer to worker-1 (through worker-1's
    control address), then some come back (through the initializer's);
    a move is left half done (its command killed after the switches) and
    its taker, then in another its giver (the initializer), is SIGKILLed
    and started again with its command line; a run of the command finishes
    the move.  Every output arrives exactly once, and each worker reports
    the groups it owns."""
    c = Cluster(procs, hosts, tmp_path, messages=6000, votes=6000, rate=1000)
    c.start_two_and_send(2, after=1.5)

    def move(via: int, *args: str, timeout: float = 180):
        return subprocess.run(
            WALLAROO + ["cluster", "move", "--control", f"{hosts.address(via)}:7100",
                        "--cluster-secret-file", str(c.secret), *args],
            capture_output=True, text=True, timeout=timeout)

    def groups() -> dict:
        st = subprocess.run(WALLAROO + ["status", "--control",
                                        f"{hosts.address(1)}:7100",
                                        "--cluster-secret-file", str(c.secret),
                                        "--json"],
                            capture_output=True, text=True, timeout=WAIT)
        assert st.returncode == 0, st.stderr
        return {w["name"]: w["key_groups"] for w in json.loads(st.stdout)["workers"]}

    assert groups() == {"initializer": 512, "worker-1": 512}
    r = move(2, "--groups", "0-255", "--to", "worker-1", "--step", "64")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("key groups initializer -> worker-1") == 4, r.stdout
    assert groups() == {"initializer": 256, "worker-1": 768}
    r = move(1, "--groups", "600-699", "--to", "initializer")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "100 key groups in 2 moves" in r.stdout, r.stdout
    assert groups() == {"initializer": 356, "worker-1": 668}
    # a move half done (every switch committed, the hand-over not asked)
    # and its taker, then its giver, SIGKILLed and started again with
    # their command lines: a run of the command finishes it
    secret = load_secret(str(c.secret))
    addresses = {"initializer": (hosts.address(1), 7100),
                 "worker-1": (hosts.address(2), 7100)}
    for moving, taker, victim in ((range(256, 512), "worker-1", 2),
                                  (range(700, 800), "initializer", 1)):
        giver = half_move_at(addresses, secret, list(moving), taker)
        assert giver != taker
        c.workers[victim].p.send_signal(signal.SIGKILL)
        c.workers[victim].p.wait(timeout=WAIT)
        c.start(victim)
        c.workers[victim].wait_line(lambda line: line.startswith("ready"),
                                    timeout=120)
        r = move(2, "--groups", f"{moving[0]}-{moving[-1]}", "--to", taker)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "found under way, finished" in r.stdout, r.stdout
        print(r.stdout)
    assert groups() == {"initializer": 200, "worker-1": 824}
    c.check_all()
    for i in (1, 2):
        assert c.workers[i].terminate(timeout=60) == 0


def _key_groups(c: Cluster, via: int) -> dict:
    """Each worker's count of key groups, as ``wallaroo status`` reports."""
    st = subprocess.run(WALLAROO + ["status", "--control", f"{c.hosts.address(via)}:7100",
                                    "--cluster-secret-file", str(c.secret), "--json"],
                        capture_output=True, text=True, timeout=WAIT)
    assert st.returncode == 0, st.stderr
    return {w["name"]: w["key_groups"] for w in json.loads(st.stdout)["workers"]}


def test_a_host_joins_while_the_cluster_runs(procs, hosts, tmp_path):
    """``wallaroo run APP --join ... --live`` through worker-1's control
    port, while resumable senders feed worker-1: the others keep running
    (the same processes, never drained or restarted), the joiner takes
    its share of the key groups by live moves, is SIGKILLed and comes back
    with its command line as a member; every output arrives exactly once."""
    c = Cluster(procs, hosts, tmp_path, messages=6000, votes=6000, rate=1000)
    c.start_two_and_send(2, after=1.5)
    args = [a if a != f"{hosts.address(1)}:7100" else f"{hosts.address(2)}:7100"
            for a in c.args(3)] + ["--live"]
    c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
    line = c.workers[1].wait_line(lambda l: "grow --live by worker-2 done" in l,
                                  timeout=120)
    assert "341 key groups moved live" in line, line
    assert "joining the cluster of initializer, worker-1 while it runs" \
        in c.workers[3].stderr
    assert sorted(_key_groups(c, 3).values()) == [341, 341, 342]
    for i in (1, 2):  # never drained, stopped or started again
        assert c.workers[i].p.poll() is None and _readies(c.workers[i]) == 1
        assert "rescale" not in c.workers[i].stderr, c.workers[i].stderr[-3000:]
    time.sleep(1.0)
    c.workers[3].p.send_signal(signal.SIGKILL)
    c.workers[3].p.wait(timeout=WAIT)
    c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
    c.workers[3].wait_line(lambda line: line.startswith("ready"), timeout=120)
    assert "rejoining the cluster of initializer, worker-1, worker-2" \
        in c.workers[3].stderr
    # a member that owns state is refused (a fresh database would lose
    # it), the first member too (it once crashed the coordinator), and so
    # is another worker's address
    secret = load_secret(str(c.secret))
    me = hosts.address(3)

    def grow(name: str, control: str, data: str) -> dict:
        body = {"name": name, "control": control, "data": data, "live": True}
        return trio.run(ask_verb, (hosts.address(2), 7100), secret, "GROW", body)

    for name, host in (("worker-2", 3), ("initializer", 1)):
        at = hosts.address(host)
        answer = grow(name, f"{at}:7100", f"{at}:7101")
        assert "owns state: it restarts with its own command line" in \
            answer["error"], answer
        assert "retry" not in answer
    assert "is worker worker-1's address" in grow(
        "worker-3", f"{me}:7200", f"{hosts.address(2)}:7101")["error"]
    assert c.workers[1].p.poll() is None
    c.check_all()
    assert sorted(_key_groups(c, 1).values()) == [341, 341, 342]
    for w in c.workers.values():
        print("\n".join(line for line in w.stderr.splitlines()
                        if "grow" in line or "join" in line or "move" in line))
    for i in (3, 2, 1):
        assert c.workers[i].terminate(timeout=60) == 0


def test_a_host_joining_live_comes_through_sigkills_of_itself_and_the_coordinator(
        procs, hosts, tmp_path):
    """The joiner and the coordinator (the initializer) SIGKILLed together
    just after every member took the joiner, before its share moved: both
    start again with their command lines, the joiner asks again (or
    rejoins) and the coordinator gives it its share when it starts; the
    other worker keeps running throughout; every output exactly once."""
    c = Cluster(procs, hosts, tmp_path, messages=6000, votes=6000, rate=1000)
    c.start_two_and_send(2, after=1.5)
    args = c.args(3) + ["--live"]
    c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
    c.workers[1].wait_line(lambda l: "initializer, worker-1 took worker-2" in l,
                           timeout=120)
    for i in (3, 1):
        c.workers[i].p.send_signal(signal.SIGKILL)
    for i in (3, 1):
        c.workers[i].p.wait(timeout=WAIT)
    c.start(1)
    c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
    line = c.workers[1].wait_line(lambda l: "grow --live by worker-2 done" in l,
                                  timeout=180)
    assert "341 key groups moved live" in line, c.workers[1].stderr[-3000:]
    # the share was saved before it was given: the first member gives it
    # when it starts again, whether or not the joiner asks again
    assert "grow --live by worker-2: giving it its share of the key groups " \
        "(not given before)" in c.workers[1].stderr
    assert not (tmp_path / "state1" / "initializer.live-grow.json").exists()
    assert c.workers[2].p.poll() is None and _readies(c.workers[2]) == 1
    assert sorted(_key_groups(c, 2).values()) == [341, 341, 342]
    c.check_all()
    for w in c.workers.values():
        print("\n".join(line for line in w.stderr.splitlines()
                        if "grow" in line or "join" in line))
    for i in (3, 2, 1):
        assert c.workers[i].terminate(timeout=60) == 0


@pytest.mark.parametrize("victim", [
    3,  # the leaving worker
    pytest.param(2, marks=pytest.mark.slow),  # worker-1, which the senders feed
    pytest.param(1, marks=pytest.mark.slow),  # the first member
])
def test_a_host_that_joined_live_leaves_live(procs, hosts, tmp_path, victim):
    """``wallaroo cluster shrink --control ... --names worker-2 --live``
    after worker-2 joined with ``--live``, while resumable senders feed
    worker-1: worker-2 gives its key groups back by live moves and closes
    its sources; one worker is SIGKILLed in the drain and comes back with
    its command line (the leaving one with no sources); once both others
    dropped it, worker-2 stops, retires itself and exits 0; every other
    worker keeps its process; every output arrives exactly once."""
    c = Cluster(procs, hosts, tmp_path, messages=6000, votes=6000, rate=1000)
    c.start_two_and_send(2, after=1.0)
    args = c.args(3) + ["--live"]
    c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
    c.workers[1].wait_line(lambda l: "grow --live by worker-2 done" in l, timeout=120)
    q = c.shrink(2, "--query")
    assert q.returncode == 0, q.stderr
    assert "may leave with --live (the last ones of these): worker-2" in q.stdout
    refused = c.shrink(2, "--names", "worker-1", "--live")
    assert refused.returncode != 0
    assert "only the members that joined last leave" in refused.stderr, refused.stderr
    time.sleep(1.0)
    shrink = subprocess.Popen(c.shrink_args(2, "--names", "worker-2", "--live"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    c.workers[3].wait_line(lambda l: "leaving the cluster while it runs" in l,
                           timeout=120)
    c.workers[victim].p.send_signal(signal.SIGKILL)
    c.workers[victim].p.wait(timeout=WAIT)
    if victim == 3:
        c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
    else:
        c.start(victim)
    out, err = shrink.communicate(timeout=300)
    assert shrink.returncode == 0, out + err
    assert "shrank live in" in out, out
    assert c.workers[3].wait(timeout=120) == 0, c.workers[3].stderr[-3000:]
    assert ("started again with no sources" in c.workers[3].stderr) == (victim == 3)
    assert "left the cluster while it ran: retired (initializer, worker-1 go on)" \
        in c.workers[3].stderr
    assert _key_groups(c, 1) == {"initializer": 512, "worker-1": 512}
    for i in (1, 2):
        assert c.workers[i].p.poll() is None
        assert _readies(c.workers[i]) == 1 or i == victim
        # its addresses left with it: another worker may join there
        known = trio.run(ask, (hosts.address(i), 7100), load_secret(str(c.secret)),
                         "MEMBERS")
        assert sorted(known["addresses"]) == ["initializer", "worker-1"], known
    ins = subprocess.run(WALLAROO + ["recovery", "inspect", c.state(3)],
                         capture_output=True, text=True, timeout=WAIT)
    assert "left the cluster while it ran" in ins.stdout, ins.stdout
    again = c.procs(*args, prefix=hosts.run_in(3, []))
    assert again.wait(timeout=WAIT) == 0
    assert "left its cluster in a rescale" in again.stderr
    c.check_all()
    print(out)
    for w in c.workers.values():
        print("\n".join(line for line in w.stderr.splitlines()
                        if "leav" in line or "shrank" in line or "retir" in line))
    for i in (2, 1):
        assert c.workers[i].terminate(timeout=60) == 0


def test_a_live_leave_stopped_half_way_is_finished_by_the_command_run_again(
        procs, hosts, tmp_path):
    """The steps of a live shrink done by hand up to the first member's
    drop (as a command killed there leaves them): every key group moved
    away, worker-2 told to leave, the initializer dropping it.  The command
    run again through the initializer (which no longer lists worker-2)
    finishes it: worker-1 drops worker-2, which retires itself; every
    output exactly once.  A shrink of a worker that left is refused."""
    c = Cluster(procs, hosts, tmp_path, messages=4000, votes=4000, rate=1000)
    c.start_two_and_send(2, after=1.0)
    args = c.args(3) + ["--live"]
    c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
    c.workers[1].wait_line(lambda l: "grow --live by worker-2 done" in l, timeout=120)
    moved = subprocess.run(
        WALLAROO + ["cluster", "move", "--control", f"{hosts.address(2)}:7100",
                    "--cluster-secret-file", str(c.secret), "--groups", "0-1023",
                    "--to", "initializer"], capture_output=True, text=True, timeout=180)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    secret = load_secret(str(c.secret))
    stay = ["initializer", "worker-1"]

    def ask_host(host: int, verb: str, body: dict) -> dict:
        return trio.run(ask_verb, (hosts.address(host), 7100), secret, verb, body)

    assert ask_host(3, "LIVE_LEAVE", {"members": stay}) == {"ok": True, "owns": 0}
    assert "error" in ask_host(3, "LIVE_LEAVE", {"members": ["initializer"]})
    # while it leaves, a stop-the-world shrink is refused before any drain
    stw = c.shrink(2, "--names", "worker-2")
    assert stw.returncode == 1
    assert "worker-2 is leaving the cluster while it runs" in stw.stderr, stw.stderr
    deadline = time.monotonic() + 60
    while True:  # until worker-2's last acknowledgements reached it
        answer = ask_host(1, "LIVE_REMOVE_MEMBERS", {"members": stay})
        if "error" not in answer or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer["membership"]["members"] == stay, answer
    # through the initializer, which no longer lists worker-2
    r = subprocess.run(c.shrink_args(1, "--names", "worker-2", "--live"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "finishing the shrink to initializer, worker-1" in r.stdout, r.stdout
    assert c.workers[3].wait(timeout=120) == 0, c.workers[3].stderr[-3000:]
    assert "left the cluster while it ran: retired" in c.workers[3].stderr
    assert _key_groups(c, 2) == {"initializer": 1024, "worker-1": 0}
    again = c.shrink(2, "--names", "worker-2", "--live")
    assert again.returncode == 1
    assert "worker-2: not a member of the cluster (initializer, worker-1)" in \
        again.stderr and "run the command again" not in again.stderr, again.stderr
    c.check_all()
    for i in (2, 1):
        assert c.workers[i].terminate(timeout=60) == 0


def test_a_live_leave_whose_drain_cannot_end_is_called_off(procs, hosts, tmp_path):
    """worker-1 frozen (SIGSTOP) once worker-2 was told to leave: the
    command's drain cannot read its status, gives up after
    WALLAROO_GROW_WAIT seconds and tells worker-2 to stay; worker-2 starts
    again with its sources open, as a member.  Once worker-1 runs again the
    command, run again, lets worker-2 leave; every output exactly once."""
    c = Cluster(procs, hosts, tmp_path, messages=4000, votes=4000, rate=1000)
    c.start_two_and_send(2, after=1.0)
    args = c.args(3) + ["--live"]
    c.workers[3] = c.procs(*args, prefix=hosts.run_in(3, []))
    c.workers[1].wait_line(lambda l: "grow --live by worker-2 done" in l, timeout=120)
    shrink = subprocess.Popen(c.shrink_args(1, "--names", "worker-2", "--live"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "WALLAROO_GROW_WAIT": "4"})
    first = ""
    while "draining them" not in first:  # the moves are done; the drain next
        first = shrink.stdout.readline()
        assert first, shrink.communicate(timeout=60)
    c.workers[2].p.send_signal(signal.SIGSTOP)
    try:
        out, err = shrink.communicate(timeout=120)
    finally:
        c.workers[2].p.send_signal(signal.SIGCONT)
    assert "leaving the cluster while it runs" in c.workers[3].stderr
    assert shrink.returncode == 1, out + err
    assert "worker-2 stay members, their sources open again" in err, err
    c.workers[3].wait_line(lambda l: "leaving the cluster called off" in l, timeout=60)
    _ready_again(c.workers[3], 1)
    assert not (tmp_path / "state3" / "worker-2.leaving.json").exists()
    r = subprocess.run(c.shrink_args(1, "--names", "worker-2", "--live"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.workers[3].wait(timeout=120) == 0, c.workers[3].stderr[-3000:]
    assert _key_groups(c, 1) == {"initializer": 512, "worker-1": 512}
    c.check_all()
    for i in (2, 1):
        assert c.workers[i].terminate(timeout=60) == 0
