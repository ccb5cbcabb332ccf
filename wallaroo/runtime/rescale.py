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

import trio

from ..connectors.auth import load_secret
from ..recovery import moves
from ..recovery.errors import StoreError
from ..recovery.files import worker_names
from .control import ask
from .formation import saved_membership
from .placement import DEFAULT_KEY_GROUPS

QUIET_POLL = 0.2  # seconds between two looks at the draining workers


class RescaleRefused(Exception):
    """The directory cannot be rescaled as asked (the message says why)."""


def saved_cluster(directory: str) -> tuple[list[str], int] | None:
    """The members and key groups the directory's active databases record
    (None: no database yet)."""
    found: dict[str, tuple] = {}
    for name in worker_names(directory):
        if moves.is_retired(directory, name):
            continue
        saved = saved_membership(directory, name)
        if saved is None:  # before clusters: a worker on its own
            found[name] = ((name,), DEFAULT_KEY_GROUPS)
        else:
            found[name] = (tuple(saved["members"]),
                           int(saved.get("key_groups", DEFAULT_KEY_GROUPS)))
    if not found:
        return None
    kinds = set(found.values())
    if len(kinds) > 1:
        raise RescaleRefused(
            f"{directory} holds databases of different clusters: " + "; ".join(
                f"{n}.db: {', '.join(m)}" for n, (m, _) in sorted(found.items()))
            + ".  Each cluster needs a directory of its own.")
    members, groups = kinds.pop()
    return list(members), groups


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
    except (StoreError, RescaleRefused, OSError) as e:
        log.error("%s", e)
        return 2
    if saved is None or saved[0] == sup.names:
        return None
    old, key_groups = saved
    for name in sup.names:
        if name not in old and os.path.exists(moves.db_file(directory, name)) \
                and not moves.is_retired(directory, name):
            log.error("%s holds a database for worker %r, which is not a member "
                      "of the cluster there (%s) and was never retired from it; "
                      "refusing to mix its state in.  Remove its files if that "
                      "state is not wanted.", directory, name, ", ".join(old))
            return 2
    log.info("rescaling from %d workers (%s) to %d (%s): draining the old "
             "cluster first", len(old), ", ".join(old), len(sup.names),
             ", ".join(sup.names))
    code = await _drain(sup, old, secret_path)
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
        plan = moves.new_plan(old, sup.names, key_groups)
        moves.write_plan(directory, plan)
        moves.run_plan(directory, plan, log)
    except (StoreError, OSError) as e:
        log.error("rescale: %s", e)
        return 1
    return None


async def _drain(sup, old: list[str], secret_path: str) -> int | None:
    """Phase 1: the old cluster without sources, until nothing is in flight,
    then stopped (each worker checkpoints everything as it stops)."""
    from .supervisor import Supervisor
    drain = Supervisor(sup.app_path, [*sup.worker_args, "--rescale-drain"],
                       len(old), sup.resilience_dir, sup.restart_delay, sup.log,
                       sup.spec, stop_grace=sup.stop_grace, names=list(old))
    secret = load_secret(secret_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain._signals, nursery)
        for m in drain.members:
            nursery.start_soon(drain._keep_running, m, secret_path, nursery)
        await drain.all_ready()
        if not drain.stopping:
            await _wait_quiet(drain, secret)
        interrupted = drain.stopping
        drain._stop_all(nursery)
        await drain._all_done.wait()
        nursery.cancel_scope.cancel()
    if drain.failure:
        sup.log.error("rescale: %s; nothing was moved", drain.failure)
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


async def _wait_quiet(drain, secret: bytes) -> None:
    last = None
    while not drain.stopping:
        await trio.sleep(QUIET_POLL)
        try:
            answers = []
            for m in drain.members:
                if m.state != "ready" or not m.control:
                    raise OSError(f"worker {m.name} is {m.state}")
                host, _, port = m.control.rpartition(":")
                answers.append(await ask((host, int(port)), secret, "STATUS",
                                         me="supervisor", timeout=5))
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError):
            last = None
            continue
        quiet = all(a.get("inbox", {}).get("messages", 1) == 0 and all(
            c.get("batches", 1) == 0 for c in a.get("channels", ()))
            for a in answers)
        counts = tuple((a.get("messages_in"), a.get("outputs")) for a in answers)
        if quiet and counts == last:
            return
        last = counts if quiet else None
