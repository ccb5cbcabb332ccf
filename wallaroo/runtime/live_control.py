"""A running worker's side of live moves (live_moves.py): the control
verbs a coordinator (``wallaroo cluster move``) asks, each run by the
engine loop between two batches and answered once its commit has landed.

    LIVE_STATUS     {[membership]}                       -> the core's live_status()
    LIVE_SWITCH     {epoch, groups, giver, taker}        -> {"marker": n}
    LIVE_HAND_OVER  {epoch, groups, taker, markers}      -> {"done": bool}
    LIVE_ADD_MEMBERS {members[, addresses]}              -> {"membership": {...}}
    LIVE_REMOVE_MEMBERS {members[, leaving]}             -> {"membership": {...}}

A step asked again answers the same (the core finds its record), so a
coordinator that lost an answer, or was restarted, asks again."""

from __future__ import annotations

from collections import deque
from typing import Callable

import trio

from .core import Batch
from .live_moves import LiveMoveError

ANSWER_TIMEOUT = 60.0  # a step waits this long for the loop and its commit


class LiveControl:
    def __init__(self, worker):
        self.worker = worker
        # (step(core) -> (record or None, answer), event, answer holder)
        self.ops: deque = deque()

    def verbs(self) -> dict:
        return {"LIVE_STATUS": self._status, "LIVE_SWITCH": self._switch,
                "LIVE_HAND_OVER": self._hand_over,
                "LIVE_ADD_MEMBERS": self._add_members,
                "LIVE_REMOVE_MEMBERS": self._remove_members}

    async def _add_members(self, request: dict) -> dict:
        """The cluster grows (live_members.py): the core takes the members,
        then the channels to the new ones start.  Answers the membership a
        new member starts with.  Several hosts: ``addresses``, the new
        members' ``{"control", "data"}``."""
        members = [str(m) for m in request["members"]]
        addresses = request.get("addresses")
        if addresses is not None:
            addresses = {str(n): {"control": str(a["control"]), "data": str(a["data"])}
                         for n, a in addresses.items()}

        def step(core):
            record = core.live_add_members(members, addresses)
            w = self.worker
            if record is not None and w.cluster is not None:
                made = w.cluster.add_members(members, w._nursery_ref,
                                             core.membership.get("addresses"))
                w.dests += [None] * (core.destinations - len(w.dests))
                for dest, sender in made.items():
                    w.dests[dest] = sender
                w.log.info("the cluster grew to %d workers (%s); nothing moved",
                           len(members), ", ".join(members))
            return record, {"membership": core.membership}
        return await self._run(step)

    async def _remove_members(self, request: dict) -> dict:
        """The cluster's last members left (live_members.py): the core
        drops them once nothing waits for them, then their channels stop."""
        members = [str(m) for m in request["members"]]
        leaving = request.get("leaving")
        leaving = None if leaving is None else [str(m) for m in leaving]

        def step(core):
            record = core.live_remove_members(members, leaving)
            w = self.worker
            if record is not None and w.cluster is not None:
                w.cluster.remove_members(members)
                del w.dests[core.destinations:]
                w.log.info("the cluster shrank to %d workers (%s); nothing moved",
                           len(members), ", ".join(members))
            return record, {"membership": core.membership}
        return await self._run(step)

    async def _status(self, request: dict) -> dict:
        w = self.worker
        st = w.core.live_status()
        if request.get("membership"):  # the whole saved membership too
            st["membership"] = w.core.membership
        rescaler = w.cluster.rescaler if w.cluster is not None else None
        if rescaler is not None and rescaler.leaving.staying is not None:
            # several hosts: this worker leaves live; the members that stay
            st["leaving"] = list(rescaler.leaving.staying)
        return st

    async def _switch(self, request: dict) -> dict:
        def step(core):
            record, marker = core.live_switch(
                int(request["epoch"]), [int(g) for g in request["groups"]],
                str(request["giver"]), str(request["taker"]))
            return record, {"marker": marker}
        return await self._run(step)

    async def _hand_over(self, request: dict) -> dict:
        def step(core):
            epoch = int(request["epoch"])
            if epoch in core.given:
                return None, {"done": True}
            if not core.live_hand_over_ready(
                    {str(k): int(v) for k, v in request["markers"].items()}):
                return None, {"done": False}
            record = core.live_hand_over(epoch, [int(g) for g in request["groups"]],
                                         str(request["taker"]))
            return record, {"done": True}
        return await self._run(step)

    async def _run(self, step: Callable) -> dict:
        """Queue ``step`` for the engine loop; its answer once committed."""
        done, holder = trio.Event(), {}
        self.ops.append((step, done, holder))
        self.worker.wake()
        with trio.move_on_after(ANSWER_TIMEOUT):
            await done.wait()
            return holder["answer"]
        return {"error": f"worker {self.worker.opts.name!r}: the step waited "
                         f"{ANSWER_TIMEOUT:.0f}s for the engine loop; ask again"}

    def next_batch(self) -> Batch | None:
        """In the engine loop, between batches: run the first queued step.
        Returns the batch to commit (its ``landed`` event answers), or None
        when the step answered without a commit."""
        step, done, holder = self.ops.popleft()
        try:
            record, answer = step(self.worker.core)
        except (LiveMoveError, KeyError, TypeError, ValueError) as e:
            holder["answer"] = {"error": f"worker {self.worker.opts.name!r}: "
                                         f"{type(e).__name__}: {e}"}
            done.set()
            return None
        holder["answer"] = answer
        if record is None:
            done.set()
            return None
        return Batch(record, list(record.outputs), {}, 0, 0, landed=done)
