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
move done or not done, and gives the share when it starts again if the
joiner still owns no key group (``resume_shares``); otherwise
``wallaroo cluster move --control`` moves the rest.  The joiner owns no resumable stream and reads no Kafka partition
until a rescale without ``--live``.
"""

from __future__ import annotations

import trio

from ..recovery import ownership
from .live_coordinator import Coordinator, MoveFailed

ADD_WAIT = 20.0  # seconds every member has to take the joiner, per GROW
SHARE_WAIT = 600.0  # seconds the joiner has to start and take its share


class HostLiveGrow:
    """The first member's side (host_rescale.RunningSide passes ``GROW``
    with ``live`` on to it)."""

    def __init__(self, running_side):
        self.rs = running_side
        self.adding: str | None = None  # the joiner being added now
        self.sharing: set[str] = set()  # joiners being given their share

    def control_addresses(self, names) -> dict[str, tuple[str, int]]:
        from .host_rescale import split
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
        if name in members:
            if config.addresses.get(name) != wanted:
                return {"error": f"{name!r} is a member of the cluster already "
                                 f"({', '.join(members)}), at other addresses: a "
                                 f"member restarts with its own command line"}
            new = members  # taken already (by some or every member): again
            old = members[:members.index(name)]
        else:
            used = {a: n for n, v in config.addresses.items() for a in v.values()}
            for a in (control, data):
                if a in used:
                    return {"error": f"{a} is worker {used[a]}'s address"}
            new, old = [*members, name], members
        if self.adding is not None:
            return {"error": f"the cluster is taking {self.adding} now", "retry": True}
        self.adding = name
        try:
            membership = await self._add(old, new, {n: config.addresses.get(n, wanted)
                                                    for n in new[len(old):]})
        except MoveFailed as e:
            self.rs.log.warning("grow --live by %s: %s; it asks again", name, e)
            return {"error": f"not every member took {name} yet ({e})", "retry": True}
        finally:
            self.adding = None
        if name not in self.sharing:
            self.sharing.add(name)
            self.rs.nursery.start_soon(self._give_share, name)
        c = self.rs.side.control_address
        return {"membership": membership, "coordinator": f"{c[0]}:{c[1]}"}

    async def _add(self, old: list[str], new: list[str], addresses: dict) -> dict:
        """Every member of ``old`` takes the members ``new`` adds, with
        their ``addresses``; the membership they saved (the same on each)."""
        me = self.rs.me
        c = Coordinator(self.control_addresses(old), self.rs.config.secret,
                        timeout=ADD_WAIT)
        await c.finish_under_way()
        body = {"members": new, "addresses": addresses}
        answers = {}
        for m in [x for x in old if x != me] + [me]:  # this one last
            answers[m] = (await c.ask(m, "LIVE_ADD_MEMBERS", body))["membership"]
        mine = answers[me]
        differ = [m for m, a in answers.items() if a != mine]
        if differ:
            raise MoveFailed(f"{', '.join(differ)} saved another membership than "
                             f"{me}")
        self.rs.log.info("grow --live: %s took %s; nothing moved",
                         ", ".join(old), ", ".join(new[len(old):]))
        return mine

    async def resume_shares(self) -> None:
        """The first member, once started: a member that joined live and
        owns no key group yet (this worker died while it gave it its
        share) is given it now."""
        if self.refusal() is not None or self.rs.me != self.rs.config.members[0]:
            return
        p = self.rs.worker.core.placement
        owned = set(p.owner_names())
        for name in p.members[p.rule_workers:]:
            if name not in owned and name not in self.sharing:
                self.rs.log.info("grow --live by %s: giving it its share of the "
                                 "key groups (not given before)", name)
                self.sharing.add(name)
                self.rs.nursery.start_soon(self._give_share, name)

    async def _give_share(self, name: str) -> None:
        """Once ``name`` answers: live moves give it the key groups a
        rescale to the grown membership would (``balanced_owners``)."""
        try:
            members = list(self.rs.config.members)
            c = Coordinator(self.control_addresses(members), self.rs.config.secret,
                            timeout=SHARE_WAIT)
            started = trio.current_time()
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
        self.rs.log.info(
            "grow --live by %s done: %d key groups moved live in %d moves, %.2fs; "
            "the longest wait of a moving group %.3fs", name,
            sum(len(r.groups) for r in reports), len(reports),
            trio.current_time() - started,
            max((r.waited for r in reports), default=0.0))
