"""Rescaling a one-host cluster at a restart: ``wallaroo run APP --workers M
--resilience-dir DIR`` on a directory whose cluster had N workers (stopped
or killed) moves key groups to their new owners before the M workers start
(DESIGN.md §6 "Rescaling").

1. **Drain the old cluster.**  The N old workers start as usual but with no
   sources (``--rescale-drain``): each recovers from its own log and the
   channels deliver what was in flight between them, routed by the old
   membership.  Once every worker reports an empty inbox and no peer batch
   unacknowledged, twice in a row with the same message counts, the
   supervisor stops them; each then checkpoints every partition, so no
   log tail is left to replay.  ``moves.check_quiet`` checks that in every
   database before anything moves.
2. **Move** (``recovery/moves.py``): a plan file, then take, give and the
   new membership, each step one transaction marked in its database, the
   whole safe to run again after a crash at any point.  A supervisor that
   finds a plan file finishes it first.
3. The M workers start as always.

Workers that leave keep their database, marked ``retired`` (``wallaroo
recovery inspect`` shows it); it keeps the outputs it had not delivered
(their stream names are its own), and they are delivered during the drain
when the sinks are up.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import trio

from ..connectors.auth import load_secret
from ..recovery import moves, ownership
from ..recovery.errors import StoreError
from ..recovery.files import worker_names
from .control import ask
from .formation import saved_membership
from .live_members import extends
from .placement import DEFAULT_KEY_GROUPS

QUIET_POLL = 0.05  # seconds between two looks at the draining workers
# a running cluster's drain in place that takes longer than this gives way
# to the drain of the stopped cluster
IN_PLACE_TIMEOUT = 60.0
# how long the drain waits for a leaving worker's sinks to take its outputs
# (what is left is delivered by the retired worker run on its own:
# deliver_retired); WALLAROO_RESCALE_LEAVING_WAIT=SECONDS changes it
LEAVING_WAIT = float(os.environ.get("WALLAROO_RESCALE_LEAVING_WAIT", "30"))


class RescaleRefused(Exception):
    """The directory cannot be rescaled as asked (the message says why)."""


class OwnersDisagree(RescaleRefused):
    """The databases of one cluster disagree on some key groups' owners:
    a live move was left half done (``members``: the cluster's)."""

    def __init__(self, members: list[str], message: str):
        super().__init__(message)
        self.members = members


def saved_cluster(directory: str
                  ) -> tuple[list[str], int, list | None, list | None] | None:
    """The members, key groups, map of key-group owners (its runs; None:
    contiguous ranges) and map of stream-slot owners (its runs; None: the
    rule) the directory's active databases record (None: no database
    yet)."""
    found: dict[str, tuple] = {}
    for name in worker_names(directory):
        if moves.is_retired(directory, name):
            continue
        saved = saved_membership(directory, name)
        if saved is None:  # before clusters: a worker on its own
            found[name] = ((name,), DEFAULT_KEY_GROUPS, None, None)
        else:
            runs, slots = saved.get("owners"), saved.get("stream_owners")
            found[name] = (tuple(saved["members"]),
                           int(saved.get("key_groups", DEFAULT_KEY_GROUPS)),
                           None if runs is None else tuple(map(tuple, runs)),
                           None if slots is None else tuple(map(tuple, slots)))
    if not found:
        return None
    _as_grown(found)
    kinds = set(found.values())
    if len(kinds) > 1 and len({(m, g, slots) for m, g, _, slots in kinds}) == 1:
        raise OwnersDisagree(list(next(iter(kinds))[0]),
            f"the databases in {directory} disagree on which worker owns some "
            f"key groups: a live move (`wallaroo cluster move`) was left under "
            f"way.  Start the cluster with its {len(next(iter(kinds))[0])} "
            f"workers and run `wallaroo cluster move` again (any groups): it "
            f"finishes the move first; then rescale.")
    if len(kinds) > 1:
        raise RescaleRefused(
            f"{directory} holds databases of different clusters: " + "; ".join(
                f"{n}.db: {', '.join(m)}"
                + ("" if runs is None else f" ({len(runs)} runs of owners)")
                + ("" if slots is None else f" ({len(slots)} runs of stream owners)")
                for n, (m, _, runs, slots) in sorted(found.items()))
            + ".  Each cluster needs a directory of its own.")
    members, groups, runs, slots = kinds.pop()
    return (list(members), groups, None if runs is None else [list(r) for r in runs],
            None if slots is None else [list(r) for r in slots])


def _as_grown(found: dict[str, tuple]) -> None:
    """A grow while the cluster ran (live_grow.py) stopped before every
    member took the new members: those that did not take them when they
    start with the grown member list (live_members.py), so they count as
    members of the grown cluster."""
    longest = max(found.values(), key=lambda k: len(k[0]))
    members, groups = longest[0], longest[1]
    for name, kind in found.items():
        if kind[1] == groups and extends(members, kind[0]):
            found[name] = longest


def grown_from(saved: list[str], names: list[str]) -> bool:
    """``names`` are ``saved`` or more members after them (a worker that
    was down while the cluster grew takes them when it starts)."""
    return list(names) == list(saved) or extends(names, saved)


async def rescale_if_asked(sup, secret_path: str) -> int | None:
    """Before ``sup`` starts its workers: finish a rescale in progress, and
    rescale when the directory's cluster has other members than ``sup``'s.
    Returns an exit status to stop with, or None to go on."""
    directory = sup.resilience_dir
    log = sup.log
    try:
        plan = moves.read_plan(directory)
        if plan is not None:
            log.warning("finishing the rescale from %d to %d workers that a "
                        "previous run began (%s)", len(plan.old), len(plan.new),
                        moves.plan_path(directory))
            moves.run_plan(directory, plan, log)
        saved = saved_cluster(directory)
    except OwnersDisagree as e:
        if e.members == sup.names:  # the same cluster: it finishes the move
            return None
        log.error("%s", e)
        return 2
    except (StoreError, RescaleRefused, OSError, sqlite3.Error) as e:
        log.error("%s", e)
        return 2
    if saved is None or saved[0] == sup.names:
        return None
    old, key_groups, old_runs, old_slot_runs = saved
    try:
        old_owners = None if old_runs is None else ownership.decode(
            old_runs, key_groups, old)
        old_stream_owners = None if old_slot_runs is None else ownership.decode(
            old_slot_runs, ownership.STREAM_SLOTS, old, "stream-slot owners")
    except ownership.OwnershipError as e:
        log.error("%s: %s; nothing was moved", directory, e)
        return 2
    from ..recovery.sqlite_store import fingerprint_problems
    for name in old:  # never move another application's state
        try:
            fp = moves.stored_fingerprint(directory, name)
        except (sqlite3.Error, ValueError):
            fp = None  # the worker's own open reports a damaged database
        problems = fingerprint_problems(fp, sup.spec.fingerprint()) if fp else []
        if problems:
            log.error("%s holds state this application cannot use (%s.db: %s); "
                      "nothing was moved.  Use another --resilience-dir.",
                      directory, name, "; ".join(problems))
            return 2
    for name in sup.names:  # a retired worker comes back: its own run ends
        proc = sup.retired_procs.get(name)
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
    for name in sup.names:
        if name not in old and os.path.exists(moves.db_file(directory, name)) \
                and not moves.is_retired(directory, name):
            log.error("%s holds a database for worker %r, which is not a member "
                      "of the cluster there (%s) and was never retired from it; "
                      "refusing to mix its state in.  Remove its files if that "
                      "state is not wanted.", directory, name, ", ".join(old))
            return 2
    log.info("rescaling from %d workers (%s) to %d (%s)", len(old),
             ", ".join(old), len(sup.names), ", ".join(sup.names))
    sup.rescale_state = {"from": list(old), "to": list(sup.names),
                         "phase": "draining",
                         "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        return await _rescale(sup, old, key_groups, secret_path, old_owners,
                              old_stream_owners)
    finally:
        sup.rescale_state = None
        sup.write_cluster_file()


async def _rescale(sup, old: list[str], key_groups: int, secret_path: str,
                   old_owners: list[str] | None = None,
                   old_stream_owners: list[str] | None = None) -> int | None:
    directory, log = sup.resilience_dir, sup.log
    try:
        drained = not any(moves.check_quiet(directory, n) for n in old)
    except (StoreError, OSError, sqlite3.Error):
        drained = False
    if not drained:
        log.info("rescale: draining the old cluster first (no sources; what "
                 "was in flight between its workers is delivered)")
        code = await _drain(sup, old, secret_path,
                            leaving=[n for n in old if n not in sup.names])
        if code is not None:
            return code
    try:
        for name in old:
            problems = moves.check_quiet(directory, name)
            if problems:
                log.error("rescale: worker %s is not drained (%s); nothing was "
                          "moved.  Start the cluster with --workers %d, stop it, "
                          "and try again.", name, "; ".join(problems), len(old))
                return 1
        sup.rescale_state["phase"] = "moving"
        sup.write_cluster_file()
        plan = moves.new_plan(old, sup.names, key_groups, old_owners=old_owners,
                              old_stream_owners=old_stream_owners)
        moves.write_plan(directory, plan)
        moves.run_plan(directory, plan, log)
    except (StoreError, OSError, sqlite3.Error) as e:
        log.error("rescale: %s", e)
        return 1
    return None


async def _drain(sup, old: list[str], secret_path: str,
                 leaving: list[str]) -> int | None:
    """Phase 1: the old cluster without sources, until nothing is in flight,
    then stopped (each worker checkpoints everything as it stops)."""
    from .supervisor import Supervisor
    drain = Supervisor(sup.app_path, [*sup.worker_args, "--rescale-drain"],
                       len(old), sup.resilience_dir, sup.restart_delay, sup.log,
                       sup.spec, stop_grace=sup.stop_grace, names=list(old))
    drain.rescale_state = sup.rescale_state  # in its cluster.json too
    secret = load_secret(secret_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain._signals, nursery)
        for m in drain.members:
            nursery.start_soon(drain._keep_running, m, secret_path, nursery)
        await drain.all_ready()
        unfinished = None
        if not drain.stopping:
            unfinished = await _finish_live_move(drain, secret)
        if unfinished is None and not drain.stopping:
            await _wait_quiet(drain, secret, leaving)
        interrupted = drain.stopping
        drain._stop_all(nursery)
        await drain._all_done.wait()
        nursery.cancel_scope.cancel()
    if drain.failure:
        sup.log.error("rescale: %s; nothing was moved", drain.failure)
        return 1
    if unfinished is not None:
        sup.log.error("rescale: a live move under way could not be finished "
                      "(%s); nothing was moved", unfinished)
        return 1
    if interrupted:
        sup.log.info("stopped while draining the old cluster; nothing was moved")
        return 0
    bad = {n: c for n, c in drain.exit_codes.items() if c != 0}
    if bad:
        sup.log.error("rescale: old workers did not stop cleanly (%s); nothing "
                      "was moved", ", ".join(f"{n}: {c}" for n, c in bad.items()))
        return 1
    return None


async def _finish_live_move(drain, secret: bytes) -> str | None:
    """A live move left under way (``wallaroo cluster move`` stopped) is
    finished before anything else moves: its taker holds the moving groups'
    messages, which no drain delivers (live_moves.py).  ``drain``: a
    supervisor whose members run.  Returns why it could not (None: done,
    or none was under way)."""
    from .live_coordinator import Coordinator, MoveFailed

    def addresses() -> dict:
        return control_addresses(drain.members)
    with trio.move_on_after(LEAVING_WAIT):  # every member, with its address
        while len(addresses()) < len(drain.members):
            await trio.sleep(0.1)
    if len(addresses()) < len(drain.members):
        return (f"workers {', '.join(m.name for m in drain.members if not m.control)} "
                f"did not start in {LEAVING_WAIT:.0f}s")
    c = Coordinator(addresses(), secret, timeout=LEAVING_WAIT, refresh=addresses)
    try:
        r = await c.finish_under_way()
    except MoveFailed as e:
        return str(e)
    if r is not None:
        drain.log.info("rescale: finished live move %d (%d key groups %s -> %s) "
                       "first", r.epoch, len(r.groups), r.giver, r.taker)
    return None


def control_addresses(members) -> dict[str, tuple[str, int]]:
    """Each supervised member's control address (those that said one)."""
    out = {}
    for m in members:
        if m.control:
            host, _, port = m.control.rpartition(":")
            out[m.name] = (host, int(port))
    return out


async def _wait_quiet(drain, secret: bytes, leaving: list[str]) -> bool:
    """Until nothing is in flight between the workers (and the leaving
    ones delivered their outputs, for at most ``LEAVING_WAIT``); False: a
    member of a running cluster died meanwhile (it is not restarted while
    a rescale is coming)."""
    last = None
    give_up = trio.current_time() + LEAVING_WAIT
    while not drain.stopping:
        await trio.sleep(QUIET_POLL)
        try:
            answers = []
            for m in drain.members:
                if m.state == "down" and drain.pausing:
                    return False  # a drain in place: a member died
                if m.state != "ready" or not m.control:
                    raise OSError(f"worker {m.name} is {m.state}")
                host, _, port = m.control.rpartition(":")
                answers.append(await ask((host, int(port)), secret, "STATUS",
                                         me="supervisor", timeout=5))
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError):
            last = None
            continue
        quiet, counts = quiet_counts(answers)
        waiting = {m.name: sum(s.get("outputs", 0) for s in a.get("sinks", ()))
                   for m, a in zip(drain.members, answers) if m.name in leaving}
        if any(waiting.values()):
            if trio.current_time() < give_up:
                last = None
                continue
            if give_up > 0:
                give_up = 0.0
                drain.log.warning(
                    "rescale: leaving workers still hold undelivered outputs "
                    "after %.0fs (%s): they stay in their databases, marked "
                    "retired (docs/cluster.md, 'Rescaling')", LEAVING_WAIT,
                    ", ".join(f"{n}: {k}" for n, k in waiting.items() if k))
        if quiet and counts == last:
            return True
        last = counts if quiet else None
    return False


def quiet_counts(answers: list[dict]) -> tuple[bool, tuple]:
    """From the workers' STATUS answers: whether every inbox and channel is
    empty, and the counts that must stand still between two looks (a
    batch being committed is counted in but not yet in a channel)."""
    quiet = all(a.get("inbox", {}).get("messages", 1) == 0 and all(
        c.get("batches", 1) == 0 for c in a.get("channels", ()))
        for a in answers)
    counts = tuple((a.get("messages_in"), a.get("outputs"), a.get("commits"))
                   for a in answers)
    return quiet, counts


# -- while the cluster runs ------------------------------------------------

SOCKET_NAME = "supervisor.sock"


def socket_path(directory: str) -> str:
    return os.path.join(directory, SOCKET_NAME)


def next_names(names: list[str], count: int) -> list[str]:
    """``count`` more workers, named by the cluster's rule: the lowest
    ``worker-<i>`` not in use."""
    out, i = list(names), 1
    while len(out) < len(names) + count:
        if f"worker-{i}" not in out:
            out.append(f"worker-{i}")
        i += 1
    return out


def shrunk_names(names: list[str], leaving: list[str] | None,
                 count: int | None) -> list[str]:
    if leaving is None:
        if not count or count >= len(names):
            raise RescaleRefused(f"--count must be 1 to {len(names) - 1}: the "
                                 f"initializer stays")
        leaving = names[-count:]
    bad = [n for n in leaving if n not in names]
    if bad:
        raise RescaleRefused(f"not a member: {', '.join(bad)} (members: "
                             f"{', '.join(names)})")
    if names[0] in leaving:
        raise RescaleRefused(f"{names[0]} cannot leave: the cluster's first "
                             f"member stays (it forms the cluster)")
    return [n for n in names if n not in leaving]


async def rescale_live(sup, secret_path: str) -> bool:
    """Between two generations of ``sup``'s members (they stopped as on
    SIGTERM): drain, move, and let the next generation start with the new
    names.  False: the supervisor stops instead."""
    names, old = sup._next_names, list(sup.names)
    sup._next_names = None
    sup.names, sup.n = list(names), len(names)
    code = await rescale_if_asked(sup, secret_path)
    if sup.stopping:  # a signal during the rescale: no new generation
        sup.rescale_result = {"error": "the supervisor stopped during the rescale"}
        return False
    if code is not None:
        if moves.read_plan(sup.resilience_dir) is not None or code == 0:
            sup.rescale_result = {"error": "the supervisor stopped during the "
                                           "rescale; see its log"}
            sup.stop_asked.set()
            return False
        sup.names, sup.n = old, len(old)  # nothing moved: the old members go on
        sup.rescale_result = {"error": "the rescale failed before anything moved "
                                       "(see the supervisor's log); the cluster "
                                       "goes on with its members"}
    else:
        sup.rescale_result = {"ok": True, "members": list(names)}
    sup.exit_codes = {}  # the stop line names the last members
    restarts = {m.name: m.restarts for m in sup.members}
    sup.members = [type(sup.members[0])(n) for n in sup.names]
    for m in sup.members:
        m.restarts = restarts.get(m.name, 0)
    sup.write_cluster_file()
    return True


async def serve_requests(sup, secret_path: str,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The supervisor's Unix socket (``<dir>/supervisor.sock``, reachable
    by whoever may read the resilience directory): ``wallaroo cluster grow``
    and ``shrink`` send one JSON line; the answer is one JSON line."""
    path = socket_path(sup.resilience_dir)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
    except OSError as e:
        sup.log.warning("cannot listen on %s (%s): `wallaroo cluster grow/shrink` "
                        "cannot reach this supervisor", path, e)
        task_status.started()
        return
    os.chmod(path, 0o600)
    sock.listen(8)
    listener = trio.SocketListener(sock)
    task_status.started()
    try:
        await trio.serve_listeners(
            lambda stream: _request(sup, stream, secret_path), [listener])
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


_lock = None


async def _request(sup, stream, secret_path: str) -> None:
    import json
    global _lock
    if _lock is None:
        _lock = trio.Lock()
    try:
        data = b""
        with trio.move_on_after(10):
            while not data.endswith(b"\n") and len(data) < 4096:
                more = await stream.receive_some(4096)
                if not more:
                    break
                data += more
        try:
            req = json.loads(data)
            answer = await _answer(sup, req, secret_path)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            answer = {"error": f"bad request: {e}"}
        except RescaleRefused as e:
            answer = {"error": str(e)}
        await stream.send_all(json.dumps(answer).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _answer(sup, req: dict, secret_path: str) -> dict:
    op = req["op"]
    if op == "query":
        saved = saved_membership(sup.resilience_dir, sup.names[0]) or {}
        rule = saved.get("rule_workers", len(sup.names))
        return {"members": sup.names, "may_leave": sup.names[1:],
                "may_leave_live": sup.names[max(rule, 1):],
                "rescaling": sup.pausing}
    if op not in ("grow", "shrink"):
        raise ValueError(f"unknown op {op!r}")
    if _lock.locked() or sup.pausing:
        raise RescaleRefused("a rescale is in progress; try again when it is done")
    async with _lock:
        await sup.generation_ready.wait()
        if sup.stopping:
            raise RescaleRefused("the cluster is stopping")
        if op == "grow":
            count = int(req.get("count", 1))
            if count < 1:
                raise RescaleRefused("--count must be at least 1")
            names = next_names(sup.names, count)
            if req.get("live"):  # not the name of a worker that left live
                taken = sup.names + [n for n in worker_names(sup.resilience_dir)
                                     if n not in sup.names]
                names = sup.names + next_names(taken, count)[len(taken):]
        else:
            names = shrunk_names(sup.names, req.get("names"), req.get("count"))
        if sup.pending_shrink is not None and not (op == "shrink" and req.get("live")):
            raise RescaleRefused(
                f"a live shrink to {', '.join(sup.pending_shrink['names'])} "
                f"stopped half-way: run `wallaroo cluster shrink --live` to "
                f"finish it first")
        if op == "shrink" and req.get("live"):
            from .live_shrink import shrink_live
            if sup.pending_shrink is not None:
                names = list(sup.pending_shrink["names"])
                sup.log.info("shrink --live: finishing the shrink to %s first",
                             ", ".join(names))
            sup.log.info("shrink --live asked: %d workers (%s) -> %d (%s)",
                         len(sup.names), ", ".join(sup.names), len(names),
                         ", ".join(names))
            if sup.pending_grow is not None:
                raise RescaleRefused(
                    f"a live grow to {', '.join(sup.pending_grow['names'])} "
                    f"stopped half-way: run `wallaroo cluster grow --live` to "
                    f"finish it first")
            return await shrink_live(sup, names, secret_path)
        if sup.pending_grow is not None and not (op == "grow" and req.get("live")):
            raise RescaleRefused(
                f"a live grow to {', '.join(sup.pending_grow['names'])} stopped "
                f"half-way: run `wallaroo cluster grow --live` to finish it first")
        if op == "grow" and req.get("live"):
            from .live_grow import grow_live
            sup.log.info("grow --live asked: %d workers (%s) -> %d (%s)",
                         len(sup.names), ", ".join(sup.names), len(names),
                         ", ".join(names))
            return await grow_live(sup, names, secret_path)
        sup.log.info("%s asked: %d workers (%s) -> %d (%s)", op, len(sup.names),
                     ", ".join(sup.names), len(names), ", ".join(names))
        sup.rescale_result = None
        # drain in place: sources closed, what is in flight delivered; then
        # the members stop checkpointing everything and the move needs no
        # drain of its own (otherwise they stop at once and it drains them)
        # a live move under way first, while nothing else changed
        unfinished = await _finish_live_move(sup, load_secret(secret_path))
        if unfinished is not None:
            raise RescaleRefused(f"a live move under way could not be finished "
                                 f"({unfinished}); nothing changed")
        sup.begin_rescale()
        sup.rescale_state = {"from": list(sup.names), "to": names,
                             "phase": "draining",
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        sup.write_cluster_file()
        sup.close_sources()
        drained = False
        with trio.move_on_after(IN_PLACE_TIMEOUT):
            drained = await _wait_quiet(sup, load_secret(secret_path), [
                n for n in sup.names if n not in names])
        sup.pause_for_rescale(names, "drained" if drained else "rescale")
        while sup.rescale_result is None and not sup.stopping:
            await trio.sleep(0.05)
        result = sup.rescale_result or {"error": "the cluster stopped"}
        if result.get("ok"):
            await sup.generation_ready.wait()
            result["members"] = sup.names
            # from the request to the new members all ready
            result["seconds"] = round(trio.current_time() - sup.rescale_started, 3)
        return result


# -- retired workers' outputs ---------------------------------------------

async def deliver_retired(sup, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run every retired worker whose database still holds outputs on its
    own, with no sources (``--deliver-retired``), until its sinks have
    them all; again after ``--restart-delay`` when it fails.  Its log goes
    to ``<name>.log`` and to the supervisor's stderr as ``<name> | ...``."""
    from ..recovery.files import worker_names
    directory = sup.resilience_dir
    waiting = []
    for name in worker_names(directory):
        if name in sup.names or name in sup.delivering \
                or not moves.is_retired(directory, name):
            continue
        try:
            n = moves.undelivered_outputs(directory, name)
        except Exception as e:  # its own run reports what is wrong
            sup.log.warning("retired worker %s: cannot read its outputs: %s", name, e)
            continue
        if n:
            waiting.append((name, n))
    task_status.started()
    async with trio.open_nursery() as nursery:
        for name, n in waiting:
            sup.log.info("retired worker %s holds %d undelivered outputs: "
                         "delivering them", name, n)
            sup.delivering.add(name)
            nursery.start_soon(_deliver_one, sup, name)


async def _deliver_one(sup, name: str) -> None:
    try:
        await _deliver_loop(sup, name)
    finally:
        sup.delivering.discard(name)


def _still_retired(sup, name: str) -> bool:
    return not sup.stopping and name not in sup.names


async def _deliver_loop(sup, name: str) -> None:
    cmd = [sys.executable, "-m", "wallaroo.cli", "run", sup.app_path,
           *sup.worker_args, "--name", name, "--deliver-retired"]
    failures = 0
    while _still_retired(sup, name):
        proc = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True)
        sup.retired_procs[name] = proc
        try:
            with open(os.path.join(sup.resilience_dir, f"{name}.log"), "ab",
                      buffering=0) as logf:
                buf = b""
                async for data in proc.stderr:
                    logf.write(data)
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        sys.stderr.write(f"{name} | {raw.decode('utf-8', 'replace')}\n")
                    sys.stderr.flush()
            code = await proc.wait()
        finally:
            if sup.retired_procs.get(name) is proc:
                del sup.retired_procs[name]
            if proc.returncode is None:  # cancelled: it must not outlive us;
                proc.terminate()  # a stop keeps its delivery positions
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(10):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
        if not _still_retired(sup, name):
            return
        left = moves.undelivered_outputs(sup.resilience_dir, name)
        if code == 0 and not left:
            sup.log.info("retired worker %s: every output delivered", name)
            return
        failures = 0 if code == 0 else failures + 1
        if failures >= 5:
            sup.log.error("retired worker %s failed %d times in a row (see "
                          "%s.log); its %d undelivered outputs stay in its "
                          "database until the next start", name, failures,
                          name, left)
            return
        await trio.sleep(max(sup.restart_delay, 1.0))
