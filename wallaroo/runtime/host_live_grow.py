"""Several hosts: a worker joins a running cluster while it runs
(docs/cluster.md, "Growing while it runs, several hosts"):

    wallaroo run APP --join <any worker's control H:P> --name W \\
        --my-control H:P --my-data H:P --cluster-secret-file F \\
        --resilience-dir D --live

The live counterpart of host_rescale.py's stop-the-world grow, the steps
of the one-host ``wallaroo cluster grow --live`` (live_grow.py) with the
first member coordinating instead of a supervisor:

1. the joiner's ``GROW {name, control, data, live}`` reaches the first
   member (another member passes it on); a live move left under way is
   finished first;
2. every member takes the new one with its addresses
   (``LIVE_ADD_MEMBERS``, one commit each, nothing moving or pausing),
   and the answer gives the joiner the grown membership: it starts from
   it, owning nothing;
3. once the joiner answers, live moves (live_coordinator.py) give it its
   share of the key groups, ``STEP`` at a time, while every other group
   flows.

Each step can be asked again: a joiner that gets no answer (a member is
down, the first member restarted, the answer was lost) asks ``GROW``
again and the first member asks every member again; members that took
the joiner answer the same.  Until every member has taken it, channels
between members that did and members that did not refuse each other
(their fingerprints differ), so their peer batches wait; nothing is lost.
A first member that dies while it gives the joiner its share leaves each
move done or not done; it saved the joiner's name first
(``<dir>/<name>.live-grow.json``) and, when it starts again, finishes a
move left under way and gives the rest of the share (``resume_shares``).
One joiner is taken at a time: another is answered "try again" until the
share has moved.  The joiner owns no resumable stream and reads no Kafka partition
until a rescale without ``--live``.
"""

from __future__ import annotations

import json
import os

import trio

from ..recovery import ownership
from ..recovery.files import atomic_write, remove_synced
from ..recovery.sink_identities import peer_identity
from .host_rescale import split
from .live_coordinator import Coordinator, MoveFailed, StepRefused

ADD_WAIT = 20.0  # seconds every member has to take the joiner, per GROW
SHARE_WAIT = 600.0  # seconds the joiner has to start and take its share


def shares_file(directory: str, name: str) -> str:
    """The first member's list of joiners whose share is still to move."""
    return os.path.join(directory, f"{name}.live-grow.json")


def read_shares(directory: str, name: str) -> list[str]:
    try:
        with open(shares_file(directory, name)) as f:
            return list(json.load(f)["joiners"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        return []  # unreadable: `wallaroo cluster move` gives what is missing


def write_shares(directory: str, name: str, joiners: list[str]) -> None:
    path = shares_file(directory, name)
    if joiners:
        atomic_write(path, (json.dumps({"joiners": joiners}) + "\n").encode())
    else:
        remove_synced(path)


class HostLiveGrow:
    """The first member's side (host_rescale.RunningSide passes ``GROW``
    with ``live`` on to it)."""

    def __init__(self, running_side):
        self.rs = running_side
        self.adding: str | None = None  # the joiner being added now
        self.sharing: set[str] = set()  # joiners being given their share

    def control_addresses(self, names) -> dict[str, tuple[str, int]]:
        addresses = self.rs.config.addresses
        return {n: split(addresses[n]["control"]) for n in names}

    def refusal(self) -> str | None:
        w = self.rs.worker
        if self.rs.directory is None:
            return ("a cluster without --resilience-dir cannot grow (state moves "
                    "between the workers' databases)")
        if w.core.timers is not None:
            return ("applications with windows cannot grow live yet: join "
                    "without --live (the cluster stops, then rescales)")
        return None

    async def grow(self, name: str, control: str, data: str) -> dict:
        why = self.refusal()
        if why is not None:
            return {"error": why}
        config = self.rs.config
        members = list(config.members)
        wanted = {"control": control, "data": data}
        p = self.rs.worker.core.placement
        if name in members:
            # taken already, by some or every member, and never started
            # (a member with state restarts with its own command line and
            # database: a fresh one would lose its state)
            i = members.index(name)
            if i < p.rule_workers or name in p.owner_names():
                return {"error": f"{name!r} is a member of the cluster already "
                                 f"({', '.join(members)}), and owns state: it "
                                 f"restarts with its own command line and its "
                                 f"database"}
            if config.addresses.get(name) != wanted:
                return {"error": f"{name!r} is a member of the cluster already "
                                 f"({', '.join(members)}), at other addresses: a "
                                 f"member restarts with its own command line"}
            new, old = members, members[:i]
        else:
            used = {a: n for n, v in config.addresses.items() if n in members
                    for a in v.values()}
            for a in (control, data):
                if a in used:
                    return {"error": f"{a} is worker {used[a]}'s address"}
            if self.rs.worker.core.store.had_destination(peer_identity(name)):
                return {"error": f"{name!r} was a member of this cluster (it left): "
                                 f"a worker joining while the cluster runs takes a "
                                 f"name never used in it"}
            new, old = [*members, name], members
        busy = sorted(self.sharing - {name}) + ([self.adding] if self.adding else [])
        if busy:  # one joiner at a time: its moves would miss the next one
            return {"error": f"the cluster is taking {', '.join(busy)} now",
                    "retry": True}
        self._save_share(name)  # before any member takes it
        self.adding = name
        try:
            membership = await self._add(old, new, {n: config.addresses.get(n, wanted)
                                                    for n in new[len(old):]})
        except StepRefused as e:
            if name in self.rs.config.members:  # this one took it: finish later
                self.rs.log.warning("grow --live by %s: %s; it asks again", name, e)
                return {"error": f"not every member took {name} yet ({e})",
                        "retry": True}
            self.rs.log.error("grow --live by %s refused: %s", name, e)
            self._drop_share(name)
            return {"error": f"a member refused {name}: {e}"}
        except MoveFailed as e:
            self.rs.log.warning("grow --live by %s: %s; it asks again", name, e)
            return {"error": f"not every member took {name} yet ({e})", "retry": True}
        finally:
            self.adding = None
        self._start_share(name)
        c = self.rs.side.control_address
        return {"membership": membership, "coordinator": f"{c[0]}:{c[1]}"}

    async def _add(self, old: list[str], new: list[str], addresses: dict) -> dict:
        """Every member of ``old`` takes the members ``new`` adds, with
        their ``addresses``; the membership they saved (the same on each)."""
        me = self.rs.me
        c = Coordinator(self.control_addresses(old), self.rs.config.secret,
                        timeout=ADD_WAIT)
        await c.finish_under_way()
        statuses = await c.statuses()
        leaving = [n for n, st in statuses.items() if st.get("leaving")]
        if leaving:  # a member appended now would be dropped with them
            raise MoveFailed(f"{', '.join(leaving)} is leaving the cluster")
        differ = {n: st["members"] for n, st in statuses.items()
                  if st.get("members") not in (old, new)}
        if differ:  # a shrink half done (some dropped a member, some not)
            raise MoveFailed("the members disagree on who is in the cluster ("
                             + "; ".join(f"{n}: {', '.join(m)}"
                                         for n, m in differ.items()) + ")")
        body = {"members": new, "addresses": addresses}
        answers = {}
        for m in old:  # this one (the first) first: its refusal changes nothing
            answers[m] = (await c.ask(m, "LIVE_ADD_MEMBERS", body))["membership"]
        mine = answers[me]

        def seen(a: dict) -> tuple:  # (owners differ while a move runs)
            return a["members"], {n: v for n, v in (a.get("addresses") or {}).items()
                                  if n in a["members"]}
        differ = [m for m, a in answers.items() if seen(a) != seen(mine)]
        if differ:
            raise StepRefused(f"{', '.join(differ)} saved another membership "
                              f"than {me}")
        self.rs.log.info("grow --live: %s took %s; nothing moved",
                         ", ".join(old), ", ".join(new[len(old):]))
        return mine

    def _save_share(self, name: str) -> None:
        """``name`` in ``<dir>/<first>.live-grow.json`` (synced), before any
        member takes it: a first member that dies from then on gives it
        its share when it starts again."""
        joiners = read_shares(self.rs.directory, self.rs.me)
        if name not in joiners:
            write_shares(self.rs.directory, self.rs.me, joiners + [name])

    def _drop_share(self, name: str) -> None:
        write_shares(self.rs.directory, self.rs.me,
                     [n for n in read_shares(self.rs.directory, self.rs.me) if n != name])

    def _start_share(self, name: str) -> None:
        """Give ``name`` its share in the background (once)."""
        if name not in self.sharing:
            self.sharing.add(name)
            self.rs.nursery.start_soon(self._give_share, name)

    def resume_shares(self) -> None:
        """The first member, once started: the shares it was giving when it
        stopped are given now (a move left under way finished first); a
        joiner it had not taken yet is forgotten (it asks again)."""
        if self.refusal() is not None or self.rs.me != self.rs.config.members[0]:
            return
        for name in read_shares(self.rs.directory, self.rs.me):
            if name not in self.rs.config.members:
                self._drop_share(name)
                continue
            self.rs.log.info("grow --live by %s: giving it its share of the "
                             "key groups (not given before)", name)
            self._start_share(name)

    async def _give_share(self, name: str) -> None:
        """Once ``name`` answers: live moves give it the key groups a
        rescale to the grown membership would (``balanced_owners``)."""
        try:
            members = list(self.rs.config.members)
            c = Coordinator(self.control_addresses(members), self.rs.config.secret,
                            timeout=SHARE_WAIT)
            started = trio.current_time()
            await c.finish_under_way()
            while True:  # the joiner answers once it has started
                st = await c.ask(name, "LIVE_STATUS", {})
                if st.get("members") == members:
                    break
                await trio.sleep(0.2)
            first = await c.ask(members[0], "LIVE_STATUS", {})
            current = ownership.decode(first["owners"], first["key_groups"], members)
            target = ownership.balanced_owners(current, members)
            groups = [g for g, o in enumerate(target) if o == name and current[g] != name]
            reports = await c.move(groups, name)
        except MoveFailed as e:
            self.rs.log.error(
                "grow --live by %s: giving it key groups stopped: %s; `wallaroo "
                "cluster move --control ... --to %s` moves them", name, e, name)
            return
        finally:
            self.sharing.discard(name)
        self._drop_share(name)
        self.rs.log.info(
            "grow --live by %s done: %d key groups moved live in %d moves, %.2fs; "
            "the longest wait of a moving group %.3fs", name,
            sum(len(r.groups) for r in reports), len(reports),
            trio.current_time() - started,
            max((r.waited for r in reports), default=0.0))
