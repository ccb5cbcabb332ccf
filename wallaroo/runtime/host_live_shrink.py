"""Several hosts: members that joined live leave while the cluster runs
(docs/cluster.md, "Shrinking while it runs, several hosts"):

    wallaroo cluster shrink --control H:P --cluster-secret-file F \\
        (--names W1,W2 | --count K) --live

The steps of the one-host ``shrink --live`` (live_shrink.py), with the
command coordinating (as ``wallaroo cluster move --control`` does) and
each leaving worker retiring itself on its own host:

1. The command asks the worker at ``--control`` for the members and their
   addresses, and the first member for the saved membership: the leaving
   members must be the last ones, and must have joined live (past
   ``rule_workers``: no resumable stream or Kafka partition is theirs).
2. A live move left under way is finished, and live moves give the
   leaving members' key groups to the others while every group flows.
3. Each leaving worker is told to leave (``LIVE_LEAVE``): it saves
   ``<dir>/<name>.leaving.json`` (synced), closes its sources, and from
   then on watches the others.  The command waits until nothing is in
   flight to or from the leaving workers (every member's STATUS, twice in
   a row with the same counts, as on one host).
4. Every other member drops them (``LIVE_REMOVE_MEMBERS``, one commit
   each) while they still run: a member that crashes before its commit
   starts again with every member and gets their acknowledgements again.
5. A leaving worker that sees every other member without it stops, checks
   that its database holds nothing for the others, marks itself retired
   with the membership they went on with, delivers what its sinks still
   wait for, removes its file and exits 0.

**Crashes.**  A leaving worker killed at any point starts again with its
command line, finds its file, runs with no sources and goes on watching
(or, if the others dropped it already, retires at once).  A command
stopped or killed part-way is run again: a member that dropped the
leaving ones already makes it go on at step 4; before that it starts
over (the moves and the leave are idempotent).  If the drain does not
end in time and nobody dropped them, the command tells them to stay
(``LIVE_LEAVE`` with ``stay``): they remove their file and start again
with their command lines, sources open.  Clients of a leaving worker's
sources (on its host's address) must be pointed at another worker: a
resumable one resumes there from what was committed.
"""

from __future__ import annotations

import json
import logging
import os
import time

import trio

from ..recovery import moves
from ..recovery.files import atomic_write, remove_synced
from . import live_members
from .control import ASK_ERRORS, ask, ask_verb
from .host_rescale import split
from .live_coordinator import Coordinator
from .live_moves import LiveMoveError
from .live_shrink import give_away, held_by_leaving, leaving_counts, undelivered
from .rescale import LEAVING_WAIT, QUIET_POLL

WAIT = float(os.environ.get("WALLAROO_GROW_WAIT", "600"))  # per step
WATCH_POLL = 0.5  # seconds between a leaving worker's looks at the others
STOP_WAIT = 120.0  # seconds a dropped worker may take to stop


def leaving_file(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.leaving.json")


def read_leaving(directory: str | None, name: str) -> dict | None:
    """What ``<dir>/<name>.leaving.json`` says (None: not leaving)."""
    if not directory:
        return None
    try:
        with open(leaving_file(directory, name)) as f:
            body = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LiveMoveError(f"{leaving_file(directory, name)}: unreadable ({e}); "
                            f"it says this worker leaves its cluster") from None
    return body


def _write_leaving(directory: str, name: str, body: dict) -> None:
    atomic_write(leaving_file(directory, name),
                 (json.dumps(body, indent=1) + "\n").encode())


def _remove_leaving(directory: str, name: str) -> None:
    remove_synced(leaving_file(directory, name))


class Leaving:
    """A running worker's side: ``LIVE_LEAVE`` and the watch of step 5."""

    def __init__(self, running_side):
        self.rs = running_side
        self.watching = False
        self.staying: list[str] | None = None  # leaving: the members that stay

    def verbs(self) -> dict:
        return {"LIVE_LEAVE": self.leave}

    def status_extra(self) -> dict:
        return {} if self.staying is None else {"leaving": {"stay": self.staying}}

    async def leave(self, request: dict) -> dict:
        rs = self.rs
        directory, me = rs.directory, rs.me
        if directory is None:
            return {"error": f"worker {me!r} has no --resilience-dir"}
        body = read_leaving(directory, me)
        if request.get("stay"):
            if body is not None and "membership" not in body:
                _remove_leaving(directory, me)
                self.staying = None
                rs.log.info("leaving the cluster called off: starting again "
                            "with the same command line (sources open)")
                rs.after = "exec"
                rs.worker.request_stop()
            return {"ok": True}
        names = [str(n) for n in request.get("members", ())]
        leaving = request.get("leaving")
        if rs.current is not None or rs.draining is not None:
            return {"error": f"worker {me!r} takes part in a rescale now"}
        p = rs.worker.core.placement
        try:
            if me in names:
                raise LiveMoveError(f"worker {me!r} is not one of those leaving")
            live_members.may_leave(p.members, names, p.rule_workers)
            if leaving is not None and p.members[len(names):] != list(leaving):
                raise LiveMoveError(
                    f"the members after {', '.join(names)} are "
                    f"{', '.join(p.members[len(names):])}, not {', '.join(leaving)} "
                    f"(did one join meanwhile?)")
        except LiveMoveError as e:
            return {"error": f"worker {me!r}: {e}"}
        if body is None:
            _write_leaving(directory, me, {"members": names})
            rs.worker.close_sources()
            rs.log.info("leaving the cluster while it runs (%s stay): sources "
                        "closed; stopping once every one of them dropped %s",
                        ", ".join(names), me)
        elif body["members"] != names:
            return {"error": f"worker {me!r} is leaving already, "
                             f"{', '.join(body['members'])} staying"}
        self.watch()
        return {"ok": True, "owns": sum(1 for o in p.owner_names() if o == me)}

    def watch(self) -> None:
        """Step 5, in the background (at most one)."""
        body = read_leaving(self.rs.directory, self.rs.me)
        if not self.watching and body:
            self.watching = True
            self.staying = body["members"]
            self.rs.nursery.start_soon(self._watch)

    async def _watch(self) -> None:
        rs = self.rs
        names = read_leaving(rs.directory, rs.me)["members"]
        addresses = {n: split(rs.config.addresses[n]["control"]) for n in names}
        noted = 0.0
        while True:
            try:
                answers = {n: await ask_verb(addresses[n], rs.config.secret,
                                             "LIVE_STATUS", {"membership": True},
                                             me=rs.me, timeout=10) for n in names}
                keeping = [n for n, a in answers.items()
                           if rs.me in a.get("members", ())
                           or not a.get("members_landed", True)]
                holding = self._holding()
                if not keeping and not holding:
                    break
                why = (f"{', '.join(keeping)} to drop {rs.me}" if keeping else
                       f"its own: {'; '.join(holding)}")
            except ASK_ERRORS as e:
                why = f"an answer ({e or type(e).__name__})"
            if trio.current_time() - noted > 30:
                noted = trio.current_time()
                rs.log.info("leaving: waiting for %s", why)
            await trio.sleep(WATCH_POLL)
        _write_leaving(rs.directory, rs.me, {"members": names,
                                             "membership": answers[names[0]]["membership"]})
        rs.log.info("every remaining member (%s) dropped %s: stopping, then "
                    "retiring", ", ".join(names), rs.me)
        rs.after = "leave"
        rs.worker.request_stop()

    def _holding(self) -> list[str]:
        """What this worker still has in flight (its inbox, a batch being
        committed, its channels): it stops only once that is nothing, so
        its database holds nothing for the others when it retires."""
        st = self.rs.side.status()
        return held_by_leaving({self.rs.me: st}, {self.rs.me}, count_sinks=False)


def retire(directory: str, name: str, log: logging.Logger) -> bool:
    """Step 5 once stopped: the database checked and marked retired, the
    file removed.  False: it still holds something for the others (kept a
    member, the file kept, the reason logged)."""
    from .live_shrink import _still_held
    body = read_leaving(directory, name)
    held = _still_held(directory, [name])
    if held:
        log.error("leaving: %s still holds %s: not retired, and its database "
                  "keeps it (nothing is lost).  The others dropped it, so it "
                  "cannot deliver that itself: `wallaroo recovery inspect` shows "
                  "what; docs/cluster.md, \"Shrinking while it runs, several "
                  "hosts\"", name, "; ".join(held[name]))
        return False
    moves.mark_retired(directory, name, body["membership"])
    _remove_leaving(directory, name)
    log.info("left the cluster while it ran: retired (%s go on)",
             ", ".join(body["membership"]["members"]))
    return True


# -- the command's side ----------------------------------------------------

class ShrinkFailed(Exception):
    """The shrink stopped (the message says why); ``again``: running the
    command again goes on from there (False: it would be another shrink,
    or the same refusal)."""

    def __init__(self, message: str, again: bool = True):
        super().__init__(message)
        self.again = again


async def shrink_hosts(addresses: dict[str, tuple[str, int]], secret: bytes,
                       wanted: list[str] | None, count: int | None,
                       echo=print) -> dict:
    """Shrink the cluster whose members' control ``addresses`` are given
    (as the worker asked knows them): the members ``wanted`` leave, or its
    last ``count``.  Returns the outcome for the command's last line."""
    t0 = trio.current_time()
    c = Coordinator(dict(addresses), secret, timeout=WAIT)
    statuses = {n: await c.ask(n, "LIVE_STATUS", {"membership": True})
                for n in addresses}
    lists = {tuple(st["members"]) for st in statuses.values()}
    if len({len(m) for m in lists}) < len(lists):
        raise ShrinkFailed("the members disagree on who is in the cluster: "
                           + "; ".join(f"{n}: {', '.join(st['members'])}"
                                       for n, st in statuses.items()), False)
    members = list(max(lists, key=len))
    c.members = [n for n in members if n in addresses]
    if len(lists) > 1:  # stopped at step 4 before: some dropped them already
        names = list(min(lists, key=len))
        gone = [n for n in members if n not in names]
        if (wanted is not None and sorted(wanted) != sorted(gone)) or \
                (count is not None and count != len(gone)):
            echo(f"a shrink to {', '.join(names)} was under way: finishing it "
                 f"first; run the command again for another")
        reports = []
        echo(f"finishing the shrink to {', '.join(names)}: some members dropped "
             f"{', '.join(gone)} already")
    else:
        if wanted is not None:
            unknown = [n for n in wanted if n not in members]
            if unknown:
                raise ShrinkFailed(f"{', '.join(unknown)}: not a member of the "
                                   f"cluster ({', '.join(members)})", False)
            names = [n for n in members if n not in wanted]
        elif count >= len(members):
            raise ShrinkFailed(f"--count must be 1 to {len(members) - 1}: the "
                               f"first member ({members[0]}) stays", False)
        else:
            names = members[:-count]
        rule = statuses[members[0]]["membership"].get("rule_workers", len(members))
        try:
            live_members.may_leave(members, names, rule)
        except LiveMoveError as e:
            raise ShrinkFailed(f"{e}; nothing changed", False) from None
        other = {n: st["leaving"] for n, st in statuses.items()
                 if st.get("leaving") and st["leaving"] != names}
        if other:
            n, stay = next(iter(other.items()))
            raise ShrinkFailed(f"{n} is leaving already, in a shrink to "
                               f"{', '.join(stay)}: run that shrink again to "
                               f"finish it; nothing changed", False)
        leaving = [n for n in members if n not in names]
        reports = await give_away(c, members, names)
        moved = sum(len(r.groups) for r in reports)
        echo(f"{moved} key groups of {', '.join(leaving)} moved live in "
             f"{len(reports)} moves; draining them")
        for n in leaving:
            await c.ask(n, "LIVE_LEAVE", {"members": names, "leaving": leaving})
        why = await _drain(c, members, leaving)
        if why is not None:
            c.deadline = time.monotonic() + WAIT
            for n in leaving:
                await c.ask(n, "LIVE_LEAVE", {"stay": True})
            raise ShrinkFailed(f"{why}; {', '.join(leaving)} stay members, their "
                               f"sources open again")
    leaving = [n for n in members if n not in names]
    for n in names:  # step 4, while the leaving ones still run
        c.deadline = time.monotonic() + WAIT
        answer = await c.ask(n, "LIVE_REMOVE_MEMBERS", {"members": names,
                                                        "leaving": leaving})
        if answer["membership"]["members"] != names:
            raise ShrinkFailed(f"{n} kept the members "
                               f"{', '.join(answer['membership']['members'])}")
    await _stopped(c, [n for n in leaving if n in c.addresses])
    return {"members": names, "seconds": trio.current_time() - t0,
            "moved": sum(len(r.groups) for r in reports), "moves": len(reports),
            "longest_wait": max((r.waited for r in reports), default=0.0)}


async def _drain(c: Coordinator, members: list[str], leaving: list[str]) -> str | None:
    """Until nothing is in flight to or from ``leaving``, twice in a row;
    None when drained, or why not (in ``WAIT`` seconds)."""
    last, why = None, "nothing answered"
    start = trio.current_time()
    while trio.current_time() - start < WAIT:
        await trio.sleep(QUIET_POLL)
        try:
            answers = {m: await ask(c.addresses[m], c.secret, "STATUS", timeout=5)
                       for m in members}
        except ASK_ERRORS as e:
            last, why = None, str(e) or type(e).__name__
            continue
        held = held_by_leaving(answers, leaving,
                               trio.current_time() - start < LEAVING_WAIT)
        counts = leaving_counts(answers, leaving)
        if held:
            last, why = None, "; ".join(held)
        elif counts == last:
            waiting = undelivered(answers, leaving)
            if waiting:
                logging.getLogger("wallaroo").warning(
                    "leaving workers still hold undelivered outputs (%s): they "
                    "deliver them once retired", ", ".join(
                        f"{n}: {k}" for n, k in waiting.items()))
            return None
        else:
            last = counts
    return f"draining {', '.join(leaving)} took over {WAIT:.0f}s ({why})"


async def _stopped(c: Coordinator, leaving: list[str]) -> None:
    """Until the leaving workers stop answering (they stop by themselves
    once every other member dropped them)."""
    deadline = trio.current_time() + STOP_WAIT
    for n in leaving:
        while trio.current_time() < deadline:
            try:
                await ask(c.addresses[n], c.secret, "STATUS", timeout=5)
            except ASK_ERRORS:
                break
            await trio.sleep(QUIET_POLL)
        else:
            raise ShrinkFailed(f"every other member dropped {n}, but it did not "
                               f"stop within {STOP_WAIT:.0f}s: it stops and retires "
                               f"on its own once its last batches are delivered "
                               f"(see its log)", False)
