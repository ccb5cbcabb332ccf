"""Move mode: a worker of a cluster over several hosts between two runs,
while key groups move (``host_rescale.py`` tells the whole protocol).  The
process has no sources and no data port, only its control port, on the
same address as when it runs: the coordinator's orders arrive there
(``RESCALE`` with an ``op``), and ``wallaroo status`` sees it as
``rescale``.  The coordinator (the cluster's first member) also drives
the move from here.

``move_mode`` returns what the process does next: ``"exec"`` (start again
with its own command line: the move is done, or abandoned) or
``"retired"`` (it left the cluster).
"""

from __future__ import annotations

import glob
import logging
import os
import sqlite3
import tempfile
import time

import trio

from ..recovery import moves
from ..recovery.errors import StoreError
from .cluster_side import write_own_entry
from .control import ASK_ERRORS, ControlError, ControlServer, FileAnswer, fetch_file
from .host_rescale import (GIVE_UP, _unique, abandon, accepted, plan_file,
                           read_plan_file, remove_plan_file, split, tell,
                           write_plan_file)

STEP_TIMEOUT = 3600.0  # one step's answer (a take copies whole databases)
NOTE_EVERY = 30.0  # seconds between two "waiting for" lines


class MoveMode:
    def __init__(self, directory: str, me: str, secret: bytes,
                 log: logging.Logger):
        self.directory = directory
        self.me = me
        self.secret = secret
        self.log = log
        held = read_plan_file(directory, me)
        self.plan: moves.Plan = held["plan"]
        self.phase: str = held["phase"]
        self.coordinator: str = held["coordinator"]
        self.outcome: str | None = None
        self.done = trio.Event()
        self.step = "waiting"
        self.progress: moves.TakeProgress | None = None  # a take under way
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def plan_path(self) -> str:
        return plan_file(self.directory, self.me)

    # -- what the control port answers ---------------------------------------
    def status(self) -> dict:
        p = self.plan
        return {"name": self.me, "pid": os.getpid(), "state": "rescale",
                "rescale": {"id": p.id, "from": list(p.old), "to": list(p.new),
                            "phase": self.phase,
                            "step": self.progress.step if self.progress else self.step,
                            "coordinator": self.coordinator, "since": self.since},
                "inbox": {"messages": 0, "bytes": 0}, "sinks": [], "channels": []}

    def members(self) -> dict:
        return {"members": list(self.plan.old), "me": self.me,
                "addresses": self.plan.addresses, "rescale": self.plan.id}

    async def grow(self, body: dict) -> dict:
        name = body.get("name")
        if self.me == self.coordinator and name in self.plan.new \
                and name not in self.plan.old and self.plan.addresses.get(name) == {
                    "control": body.get("control"), "data": body.get("data")}:
            return accepted(self.plan, self.plan.addresses[self.me]["control"])
        return {"error": f"a rescale is in progress ({len(self.plan.old)} -> "
                         f"{len(self.plan.new)} workers)", "retry": True}

    async def shrink(self, body: dict) -> dict:
        if body.get("query"):
            return {"members": list(self.plan.old),
                    "may_leave": list(self.plan.old[1:]), "rescaling": True}
        return {"error": "a rescale is in progress; try again when it is done"}

    async def order(self, body: dict) -> "dict | FileAnswer":
        op = body.get("op")
        plan = moves.Plan.from_json(body["plan"])
        if plan.id != self.plan.id:
            if op == "done":  # an older plan's last order, repeated
                return {"ok": True}
            return {"error": f"waiting for rescale {self.plan.id}, not {plan.id}"}
        try:
            return await self.run_op(op)
        except ASK_ERRORS + (StoreError, ControlError, sqlite3.Error) as e:
            self.log.error("rescale %s: %s failed: %s", plan.id, op, e)
            return {"error": f"{self.me}: {op}: {e}", "retry": True}

    async def run_op(self, op: str) -> "dict | FileAnswer":
        d, me, plan = self.directory, self.me, self.plan
        self.step = op
        if op == "status":
            quiet = (await trio.to_thread.run_sync(moves.check_quiet, d, me)
                     if me in plan.old else [])
            return {"state": "rescale", "plan": plan.id, "quiet": quiet}
        if op == "fetch":
            if me not in plan.old:
                return {"error": f"{me} holds nothing for rescale {plan.id}"}
            fd, tmp = tempfile.mkstemp(dir=d, prefix=f".export-{me}-")
            os.close(fd)
            try:
                await trio.to_thread.run_sync(moves.export_copy, d, me, tmp)
            except BaseException:
                os.unlink(tmp)
                raise
            return FileAnswer(tmp)
        if op == "take":
            return {"taken": await self._take()}
        if op == "give":
            n = await trio.to_thread.run_sync(moves.give, d, me, plan)
            if n:
                self.log.info("gave %d partitions to their new owners", n)
            return {"given": n}
        if op == "membership":
            await trio.to_thread.run_sync(moves.set_membership, d, me, plan)
            return {"ok": True}
        if op in ("done", "abandon"):
            if op == "abandon" and self.phase == "moving":
                return {"error": f"rescale {plan.id} is moving key groups: it "
                                 f"is finished, never abandoned"}
            remove_plan_file(d, me)
            if op == "abandon":
                self.log.warning("rescale %s abandoned; starting again as before",
                                 plan.id)
            self.outcome = "retired" if op == "done" and me not in plan.new \
                else "exec"
            self.done.set()
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    async def _take(self) -> int:
        d, me, plan = self.directory, self.me, self.plan
        if me not in plan.new:
            return 0
        if moves.taken_already(d, me, plan):
            return 0
        files = {}
        try:
            for giver in plan.old:
                if giver == me:
                    continue
                dest = os.path.join(d, f".rescale-{plan.id}-{giver}.db")
                size = await fetch_file(split(plan.addresses[giver]["control"]),
                                        self.secret, "RESCALE",
                                        {"op": "fetch", "plan": plan.to_json()},
                                        dest, me=me, timeout=STEP_TIMEOUT)
                files[giver] = dest
                self.log.info("rescale %s: copied %s's database (%d bytes)",
                              plan.id, giver, size)
            progress = moves.TakeProgress(self.log, me, plan.id)
            self.progress = progress  # status shows its step while it runs
            try:
                n = await trio.to_thread.run_sync(
                    lambda: moves.take(d, me, plan, giver_files=files,
                                       progress=progress))
            finally:
                self.progress = None
        finally:
            for path in files.values():
                for p in (path, path + "-wal", path + "-shm"):
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        pass
        if files:
            self.log.info("took %d partitions from %s", n, ", ".join(files))
        return n

    # -- the coordinator -------------------------------------------------------
    async def drive(self) -> None:
        plan, log = self.plan, self.log
        everyone = _unique([*plan.old, *plan.new])
        if self.phase == "draining":  # killed before every member was told to stop
            await self._abandon("the coordinator stopped before the drain was done")
            return
        if self.phase != "moving":
            missing = await self._all_waiting(everyone)
            if missing:
                await self._abandon("; ".join(missing))
                return
            self.phase = "moving"
            write_plan_file(self.directory, self.me, plan, "moving", self.me)
        log.info("rescale %s: every worker waits in move mode; moving key groups",
                 plan.id)
        t0 = time.monotonic()
        for name in plan.new:
            await self._ask_until(name, "take")
        for name in plan.old:
            await self._ask_until(name, "give")
        for name in everyone:
            await self._ask_until(name, "membership")
        for name in everyone:
            if name != self.me:
                await self._ask_until(name, "done")
        log.info("rescale %s done: %d -> %d workers (%s) in %.2fs", plan.id,
                 len(plan.old), len(plan.new), ", ".join(plan.new),
                 time.monotonic() - t0)
        await self.run_op("done")

    async def _abandon(self, why: str) -> None:
        self.log.warning("rescale %s abandoned: %s; every worker starts again "
                         "as it was", self.plan.id, why)
        await abandon(self.plan, self.me, self.secret, self.log)
        remove_plan_file(self.directory, self.me)
        self.outcome = "exec"
        self.done.set()

    async def _all_waiting(self, everyone: list[str]) -> list[str]:
        """Wait (at most GIVE_UP seconds) until every participant waits
        for this plan in move mode with a database that needs no replay;
        what is still wrong then."""
        deadline = trio.current_time() + GIVE_UP
        while True:
            wrong = []
            for name in everyone:
                try:
                    a = await self._ask(name, "status", timeout=10)
                except ASK_ERRORS + (ControlError,) as e:
                    wrong.append(f"{name}: {e or type(e).__name__}")
                    continue
                if "error" in a:
                    wrong.append(f"{name}: {a['error']}")
                elif a.get("state") != "rescale" or a.get("plan") != self.plan.id:
                    wrong.append(f"{name}: not waiting in move mode for this plan")
                elif a.get("quiet"):
                    wrong.append(f"{name}: not drained ({'; '.join(a['quiet'])})")
            if not wrong or trio.current_time() > deadline:
                return wrong
            await trio.sleep(0.5)

    async def _ask(self, name: str, op: str, timeout: float) -> dict:
        if name == self.me:
            answer = await self.run_op(op)
            assert isinstance(answer, dict)
            return answer
        return await tell(self.plan, name, op, self.secret, self.me, timeout)

    async def _ask_until(self, name: str, op: str) -> dict:
        """Ask until answered: a participant that is down keeps the
        rescale waiting (it finds its plan file when it restarts)."""
        noted = -NOTE_EVERY
        start = trio.current_time()
        while True:
            try:
                answer = await self._ask(name, op, STEP_TIMEOUT)
                if "error" not in answer:
                    return answer
                why = answer["error"]
            except ASK_ERRORS + (ControlError, StoreError) as e:
                why = str(e) or type(e).__name__
            waited = trio.current_time() - start
            if waited - noted >= NOTE_EVERY:
                noted = waited
                self.log.warning("rescale %s: waiting for worker %s to %s (%s)",
                                 self.plan.id, name, op, why)
            await trio.sleep(0.5)


async def move_mode(directory: str, me: str, secret: bytes,
                    control: tuple[str, int], log: logging.Logger) -> str:
    """Wait in move mode on ``control`` until the plan is done or given up;
    the outcome (``"exec"``, ``"retired"``, or None: stopped by a signal)."""
    mode = MoveMode(directory, me, secret, log)
    for leftover in glob.glob(os.path.join(directory, f".export-{me}-*")) + \
            glob.glob(os.path.join(directory, ".rescale-*.db*")):
        try:  # copies a killed run left
            os.unlink(leftover)
        except OSError:
            pass
    server = ControlServer(me, secret, log, status=mode.status, members=mode.members,
                           verbs={"RESCALE": mode.order, "GROW": mode.grow,
                                  "SHRINK": mode.shrink})
    plan = mode.plan
    address = await _bind(server, control, log)
    write_own_entry(directory, None, me, "rescale", address, None, [],
                    rescale=plan.id)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        # the signals are caught before the line that says this worker waits
        await nursery.start(_stop_on_signal, mode)
        log.info("rescale %s in progress (%d -> %d workers): waiting in move "
                 "mode on %s:%d", plan.id, len(plan.old), len(plan.new), *address)
        if mode.coordinator == me:
            nursery.start_soon(mode.drive)
        await mode.done.wait()
        await server.answered(0.3)  # the answer to the last order leaves
        nursery.cancel_scope.cancel()
    for ls in server.listeners:
        await ls.aclose()
    return mode.outcome


async def _stop_on_signal(mode: MoveMode,
                          task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGTERM or SIGINT in move mode: stop, saying what waits (the plan
    file stays: started again with its command line, the worker takes its
    place in the rescale)."""
    import signal
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            mode.log.warning(
                "stopped on %s in move mode: rescale %s waits for this worker "
                "(%s); start it again with its command line",
                signal.Signals(signum).name, mode.plan.id, mode.plan_path())
            mode.outcome = None
            mode.done.set()
            return


async def _bind(server: ControlServer, control: tuple[str, int], log):
    """The control address, once the stopped worker's listener is gone."""
    for attempt in range(200):
        try:
            return await server.bind(*control)
        except OSError as e:
            if attempt % 50 == 0:
                log.info("move mode: cannot listen on %s:%d yet (%s)", *control, e)
            await trio.sleep(0.05)
    return await server.bind(*control)
