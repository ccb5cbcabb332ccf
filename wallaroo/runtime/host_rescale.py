"""Rescaling a cluster over several hosts while it runs (DESIGN.md §6
"Rescaling"; docs/cluster.md, "Rescaling (several hosts)").

    grow:   wallaroo run APP --join <any worker's control H:P> --name W
                --my-control H:P --my-data H:P --cluster-secret-file F ...
    shrink: wallaroo cluster shrink --control H:P --cluster-secret-file F
                (--names W1,W2 | --count K | --query)

The cluster's first member (the initializer) coordinates; a request that
reaches another worker's control port is passed on to it.  Each worker
keeps its own database on its own host, so the move of the one-host
rescale (``recovery/moves.py``) runs on copies sent over the control ports:

1. **Drain in place.**  The coordinator writes its plan file
   (``<dir>/<name>.rescale.json``, phase ``draining``) and tells every
   member to close its sources (``RESCALE drain``).  Once nothing is in
   flight between them (and the leaving workers' sinks have their
   outputs), it tells each to stop (``RESCALE stop``): each writes the plan
   to its own plan file and stops checkpointing every partition, and its
   process waits in **move mode**: no sources, no data port, only its
   control port, on the same address.  The coordinator stops last.
2. **Check.**  The coordinator, in move mode too, asks every participant
   (joiners included) whether it waits for this plan with a database that
   needs no replay.  If one does not within ``GIVE_UP`` seconds, the
   rescale is abandoned (every worker starts again as it was; nothing
   moved) and a joiner asks again.  Otherwise the plan's phase becomes
   ``moving``, and from then on it is finished, never undone.
3. **Move.**  ``take`` on every new member (it fetches a copy of each old
   member's database, SHA-256-checked, and copies what it now owns), then
   ``give`` on every old member, then the new membership (with every
   member's addresses) in every database, the leavers' marked retired.
   Each step is one transaction marked in its database, so a step asked
   again after a crash does nothing twice; the coordinator asks until it
   is answered (a participant that is down keeps the rescale waiting).
4. **Done.**  Every participant removes its plan file and starts again
   with its own command line (the same process: ``exec``), and rejoins
   from the membership in its database; a leaver stops once its outputs
   are delivered.

A process killed at any point restarts with its command line, finds its
plan file and waits in move mode again; the coordinator finds its own and
goes on from its phase, except that a coordinator killed before it had
told every member to stop (its phase is still ``draining``) abandons the
plan at once: no member would ever be told to stop, and those it drained
start again as they were (without it they would wait ``GIVE_UP``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time

import trio

from ..recovery import moves
from ..recovery.files import remove_synced
from .control import ASK_ERRORS, ask, ask_verb
from .rescale import quiet_counts

PLAN_SUFFIX = ".rescale.json"
# seconds: a drained worker with no word from the coordinator starts again
# as it was; the coordinator abandons a plan whose participants are not all
# waiting for it in move mode after this long
GIVE_UP = float(os.environ.get("WALLAROO_RESCALE_GIVE_UP", "60"))
QUIET_TIMEOUT = 60.0  # the drain in place, at most
LEAVING_WAIT = 30.0  # how long the drain waits for leavers' outputs
POLL = 0.05
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class RescaleRefused(Exception):
    """A grow or shrink that cannot be done (the message says why)."""


# -- the plan file -----------------------------------------------------------

def plan_file(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}{PLAN_SUFFIX}")


def write_plan_file(directory: str, name: str, plan: moves.Plan, phase: str,
                    coordinator: str) -> None:
    path = plan_file(directory, name)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.rescale-")
    with os.fdopen(fd, "w") as f:
        json.dump({"plan": plan.to_json(), "phase": phase,
                   "coordinator": coordinator}, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    moves._fsync_dir(directory)


def read_plan_file(directory: str | None, name: str) -> dict | None:
    """``{"plan": Plan, "phase", "coordinator"}``, or None."""
    if not directory:
        return None
    path = plan_file(directory, name)
    try:
        with open(path) as f:
            body = json.load(f)
        return {"plan": moves.Plan.from_json(body["plan"]), "phase": body["phase"],
                "coordinator": body["coordinator"]}
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise moves.RescaleError(
            f"{path} is damaged ({e}): it records a rescale in progress; "
            f"restore it from the other workers' plan files") from None


def remove_plan_file(directory: str, name: str) -> None:
    remove_synced(plan_file(directory, name))


def split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _unique(names) -> list[str]:
    return list(dict.fromkeys(names))


async def tell(plan: moves.Plan, name: str, op: str, secret: bytes, me: str,
               timeout: float = 10) -> dict:
    """One of the coordinator's orders (``RESCALE`` with ``op``) to the
    participant ``name``; its answer."""
    return await ask_verb(split(plan.addresses[name]["control"]), secret,
                          "RESCALE", {"op": op, "plan": plan.to_json(),
                                      "coordinator": me}, me=me, timeout=timeout)


def accepted(plan: moves.Plan, coordinator_control: str) -> dict:
    """The answer to the ``GROW`` or ``SHRINK`` that began ``plan``."""
    return {"accepted": plan.id, "plan": plan.to_json(),
            "coordinator": coordinator_control}


# -- a running worker's side -----------------------------------------------

class RunningSide:
    """The verbs of a running worker's control port: ``GROW``, ``SHRINK``
    (coordinated by the first member; others pass them on) and
    ``RESCALE`` (the coordinator's orders: drain, stop, abandon)."""

    def __init__(self, side, directory: str | None):
        self.side = side
        self.worker = side.worker
        self.log: logging.Logger = side.log
        self.me = side.me
        self.directory = directory
        self.current: moves.Plan | None = None  # coordinator: in progress
        self.draining: moves.Plan | None = None  # told to drain for this
        self.after: str | None = None  # "exec": start again once stopped
        self.nursery: trio.Nursery | None = None
        self.since = ""  # when the drain began
        from .host_live_grow import HostLiveGrow
        from .host_live_shrink import Leaving
        self.live = HostLiveGrow(self)  # GROW with "live" (the coordinator's)
        self.leaving = Leaving(self)  # LIVE_LEAVE: this worker leaves live

    @property
    def config(self):
        return self.side.config

    def verbs(self) -> dict:
        return {"GROW": self.grow, "SHRINK": self.shrink, "RESCALE": self.order,
                **self.leaving.verbs()}

    def status_extra(self) -> dict:
        plan = self.current or self.draining
        if plan is None:
            return self.leaving.status_extra()
        return {"rescale": {"id": plan.id, "from": list(plan.old),
                            "to": list(plan.new), "phase": "draining",
                            "since": self.since}}

    def _coordinator(self) -> tuple[str, tuple[str, int]]:
        first = self.config.members[0]
        return first, split(self.config.addresses[first]["control"])

    async def _pass_on(self, verb: str, body: dict) -> dict:
        first, address = self._coordinator()
        try:
            return await ask_verb(address, self.config.secret, verb, body,
                                  me=self.me, timeout=30)
        except ASK_ERRORS as e:
            return {"error": f"the coordinator {first} at {address[0]}:{address[1]} "
                             f"did not answer ({e or type(e).__name__})", "retry": True}

    def _stopping(self) -> dict | None:
        stop = self.worker._stop
        if self.after is not None or self.worker.stop_mode is not None \
                or (stop is not None and stop.is_set()):
            return {"error": "the coordinator is stopping (it starts again)",
                    "retry": True}
        return None

    def _busy(self) -> dict | None:
        """Why the coordinator cannot begin a rescale now (None: it can)."""
        joining = sorted(self.live.sharing | ({self.live.adding} - {None}))
        if joining:
            return {"error": f"a worker is joining while the cluster runs "
                             f"({', '.join(joining)})", "retry": True}
        return self._stopping()

    async def grow(self, body: dict) -> dict:
        if self.me != self.config.members[0]:
            return await self._pass_on("GROW", body)
        name, control, data = body.get("name"), body.get("control"), body.get("data")
        if not (isinstance(name, str) and NAME.fullmatch(name)
                and isinstance(control, str) and isinstance(data, str)):
            return {"error": "GROW needs a name, a control and a data address"}
        members = self.config.members
        if body.get("live"):
            if self.current is not None:
                return {"error": f"a rescale is in progress ({len(self.current.old)} "
                                 f"-> {len(self.current.new)} workers)", "retry": True}
            return self._stopping() or await self.live.grow(name, control, data)
        if self._busy():
            return self._busy()
        if self.current is not None:
            joining = self.current.addresses.get(name) if name not in \
                self.current.old and name in self.current.new else None
            if joining == {"control": control, "data": data}:
                return self._accepted(self.current)  # the joiner asks again
            return {"error": f"a rescale is in progress ({len(self.current.old)} -> "
                             f"{len(self.current.new)} workers)", "retry": True}
        if name in members:
            return {"error": f"{name!r} is a member of the cluster already "
                             f"({', '.join(members)}): a member restarts with "
                             f"its own command line"}
        refused = await self._leaving()
        if refused:
            return refused
        used = {a: n for n, v in self.config.addresses.items() if n in members
                for a in v.values()}
        for a in (control, data):
            if a in used:
                return {"error": f"{a} is worker {used[a]}'s address"}
        addresses = {**self.config.addresses,
                     name: {"control": control, "data": data}}
        return self._begin([*members, name], addresses)

    async def shrink(self, body: dict) -> dict:
        if self.me != self.config.members[0]:
            return await self._pass_on("SHRINK", body)
        members = self.config.members
        if body.get("query"):
            p = self.worker.core.placement
            return {"members": members, "may_leave": members[1:],
                    "may_leave_live": members[max(1, p.rule_workers):],
                    "rescaling": self.current is not None}
        if self.current is not None:
            return {"error": "a rescale is in progress; try again when it is done"}
        if self._busy():
            return self._busy()
        from .rescale import RescaleRefused as Refused, shrunk_names
        try:
            new = shrunk_names(members, body.get("names"), body.get("count"))
        except Refused as e:
            return {"error": str(e)}
        refused = await self._leaving()
        if refused:
            return refused
        return self._begin(new, dict(self.config.addresses))

    def _begin(self, new: list[str], addresses: dict) -> dict:
        if self.directory is None:
            return {"error": "a cluster without --resilience-dir cannot rescale "
                             "(state moves between the workers' databases)"}
        members = self.config.members
        placement = self.worker.core.placement  # the map of owners it routes by
        plan = moves.new_plan(members, new, self.config.key_groups, addresses,
                              old_owners=None if placement is None
                              else placement.owner_names(),
                              old_stream_owners=None if placement is None
                              else placement.stream_owner_names())
        write_plan_file(self.directory, self.me, plan, "draining", self.me)
        self.current = plan
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.log.info("rescale %s asked: %d workers (%s) -> %d (%s)", plan.id,
                      len(members), ", ".join(members), len(new), ", ".join(new))
        self.nursery.start_soon(self._drain_and_stop, plan)
        return self._accepted(plan)

    async def _leaving(self) -> dict | None:
        """Refused (asked before a plan is accepted): a member leaving live
        (``shrink --control ... --live`` under way) would be moved back."""
        from .live_coordinator import Coordinator, MoveFailed
        members = self.config.members
        c = Coordinator({m: split(self.config.addresses[m]["control"])
                         for m in members}, self.config.secret, timeout=3)
        try:
            leaving = [n for n, st in (await c.statuses()).items()
                       if st.get("leaving")]
        except MoveFailed:
            return None  # a member down: the plan's own checks wait for it
        if leaving:
            return {"error": f"{', '.join(leaving)} is leaving the cluster while "
                             f"it runs (`wallaroo cluster shrink --control ... "
                             f"--live`): run that shrink again to finish it first"}
        return None

    def _accepted(self, plan: moves.Plan) -> dict:
        c = self.side.control_address
        return accepted(plan, f"{c[0]}:{c[1]}")

    async def _drain_and_stop(self, plan: moves.Plan) -> None:
        """The coordinator: drain in place, then every member stops into
        move mode (this one last); abandoned when that cannot be done."""
        others = [m for m in plan.old if m != self.me]
        try:
            await self._finish_live_move(plan)
            for m in others:
                await self._order_until(m, plan, "drain")
            self.worker.close_sources()
            leaving = [m for m in plan.old if m not in plan.new]
            if not await self._wait_quiet(plan, leaving):
                raise RescaleRefused("the workers did not become quiet within "
                                     f"{QUIET_TIMEOUT:.0f}s")
            for m in others:
                await self._order_until(m, plan, "stop")
        except RescaleRefused as e:
            self.log.warning("rescale %s abandoned: %s; every worker starts again "
                             "as it was", plan.id, e)
            await abandon(plan, self.me, self.config.secret, self.log)
            remove_plan_file(self.directory, self.me)
            self.after = "exec"
            self.worker.request_stop()
            return
        self.log.info("rescale %s: the cluster is drained; stopping into move "
                      "mode", plan.id)
        # every member is told to stop: a coordinator that restarts from
        # here checks on them; one that restarts in ``draining`` abandons
        write_plan_file(self.directory, self.me, plan, "stopped", self.me)
        self.worker.stop_mode = "drained"
        self.worker.request_stop()

    async def _finish_live_move(self, plan: moves.Plan) -> None:
        """A live move left under way (``wallaroo cluster move`` stopped, or
        a first member that died while it gave a joiner its share) is
        finished before the drain: its taker holds the moving groups'
        messages, which no drain delivers (live_moves.py)."""
        from .live_coordinator import Coordinator, MoveFailed
        c = Coordinator({m: split(plan.addresses[m]["control"]) for m in plan.old},
                        self.config.secret, timeout=GIVE_UP)  # as the orders
        try:
            r = await c.finish_under_way()
        except MoveFailed as e:
            raise RescaleRefused(f"a live move under way could not be finished "
                                 f"({e})") from None
        if r is not None:
            self.log.info("rescale %s: finished live move %d (%d key groups %s -> "
                          "%s) first", plan.id, r.epoch, len(r.groups), r.giver,
                          r.taker)

    async def _order_until(self, name: str, plan: moves.Plan, op: str) -> None:
        deadline = trio.current_time() + GIVE_UP
        while True:
            try:
                answer = await tell(plan, name, op, self.config.secret, self.me)
            except ASK_ERRORS as e:
                answer = {"error": str(e) or type(e).__name__, "retry": True}
            if "error" not in answer:
                return
            if not answer.get("retry") or trio.current_time() > deadline:
                raise RescaleRefused(f"worker {name}: {answer['error']}")
            await trio.sleep(0.5)

    async def _wait_quiet(self, plan: moves.Plan, leaving: list[str]) -> bool:
        last = None
        start = trio.current_time()
        while trio.current_time() - start < QUIET_TIMEOUT:
            await trio.sleep(POLL)
            try:
                answers = []
                for m in plan.old:
                    if m == self.me:
                        answers.append(self.worker.status())
                    else:
                        answers.append(await ask(
                            split(plan.addresses[m]["control"]), self.config.secret,
                            "STATUS", me=self.me, timeout=5))
            except ASK_ERRORS:
                last = None
                continue
            waiting = sum(sum(s.get("outputs", 0) for s in a.get("sinks", ()))
                          for m, a in zip(plan.old, answers) if m in leaving)
            if waiting and trio.current_time() - start < LEAVING_WAIT:
                last = None
                continue
            quiet, counts = quiet_counts(answers)
            if quiet and counts == last:
                return True
            last = counts if quiet else None
        return False

    async def order(self, body: dict) -> dict:
        """The coordinator's orders to a running member."""
        op = body.get("op")
        plan = moves.Plan.from_json(body["plan"])
        if op == "drain":
            if self.draining is None:
                self.draining = plan
                self.since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                self.worker.close_sources()
                self.log.info("rescale %s: sources closed; draining (%d -> %d "
                              "workers)", plan.id, len(plan.old), len(plan.new))
                self.nursery.start_soon(self._give_up_later, plan)
            return {"ok": True} if self.draining.id == plan.id else \
                {"error": f"draining for rescale {self.draining.id}"}
        if op == "stop":
            if self.draining is None or self.draining.id != plan.id:
                return {"error": f"not draining for rescale {plan.id}"}
            write_plan_file(self.directory, self.me, plan, "stopped",
                            body.get("coordinator", plan.old[0]))
            self.log.info("rescale %s: stopping into move mode", plan.id)
            self.worker.stop_mode = "drained"
            self.worker.request_stop()
            return {"ok": True}
        if op == "abandon":
            if self.draining is not None and self.draining.id == plan.id:
                self.log.warning("rescale %s abandoned by the coordinator; "
                                 "starting again", plan.id)
                self.after = "exec"
                self.worker.request_stop()
            return {"ok": True}
        if op == "done" and list(self.config.members) == list(plan.new):
            return {"ok": True}  # done here already
        if op == "status":
            return {"state": "running", "draining": getattr(self.draining, "id", None)}
        return {"error": f"{op}: this worker is running, not in move mode for "
                         f"rescale {plan.id}", "retry": True}

    async def _give_up_later(self, plan: moves.Plan) -> None:
        await trio.sleep(GIVE_UP)
        if self.draining is plan and self.worker.stop_mode is None:
            self.log.warning("rescale %s: no word from the coordinator for %.0fs "
                             "after the drain began; starting again as before",
                             plan.id, GIVE_UP)
            self.after = "exec"
            self.worker.request_stop()


async def abandon(plan: moves.Plan, me: str, secret: bytes, log) -> None:
    """Tell every participant the plan is given up (each starts again as
    it was); those that cannot be reached find out when they ask."""
    for name in _unique([*plan.old, *plan.new]):
        if name == me:
            continue
        try:
            await tell(plan, name, "abandon", secret, me, timeout=5)
        except ASK_ERRORS as e:
            log.info("rescale %s: could not tell %s it is abandoned (%s)",
                     plan.id, name, e or type(e).__name__)
