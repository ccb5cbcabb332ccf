"""``wallaroo cluster grow --live``: a one-host cluster grows while it runs
(docs/design/live-moves.md, step 2), the supervisor coordinating:

1. a live move left under way is finished first;
2. the supervisor's member list becomes the grown one (a member restarted
   from now on takes the new members when it starts: live_members.py),
   the grown membership is left in ``<dir>/membership.json`` for the new
   members, and every running member takes the new ones
   (``LIVE_ADD_MEMBERS``, one commit each, nothing moving or pausing);
3. the new members start, with no key groups, and once they are ready;
4. live moves (``runtime/live_coordinator.py``) give each its share: the
   groups a rescale to the grown membership would move
   (``ownership.balanced_owners``), in moves of ``STEP`` groups, while
   every other group flows.

A crash of any worker, or of the command, during any of this ends with
each move done or not done (live_moves.py); the supervisor's next grow or
``wallaroo cluster move`` finishes what is left.  Resumable streams and
Kafka partitions stay with the members that had them.
"""

from __future__ import annotations

import json
import os
import time

import trio

from ..connectors.auth import load_secret
from ..recovery import moves, ownership
from .cluster_side import GROWN_FILE
from .live_coordinator import Coordinator, MoveFailed
from .rescale import RescaleRefused

READY_WAIT = 120.0  # seconds a new member may take to start


class GrowRefused(RescaleRefused):
    """The cluster cannot grow live as asked (the message says why)."""


def _addresses(sup) -> dict:
    out = {}
    for m in sup.members:
        if m.control:
            host, _, port = m.control.rpartition(":")
            out[m.name] = (host, int(port))
    return out


def write_grown(directory: str, membership: dict) -> None:
    path = os.path.join(directory, GROWN_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(membership, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


async def grow_live(sup, names: list[str], secret_path: str) -> dict:
    """Grow ``sup``'s running cluster to ``names``; the answer for
    ``wallaroo cluster grow --live``."""
    directory = sup.resilience_dir
    new = names[len(sup.names):]
    if any(s.next_fire is not None for s in sup.spec.states):
        raise GrowRefused("applications with windows cannot grow live yet: "
                          "`wallaroo cluster grow` without --live rescales them")
    for name in new:
        if os.path.exists(moves.db_file(directory, name)):
            raise GrowRefused(
                f"{directory} holds a database for {name!r} (a worker that left "
                f"the cluster): it comes back with `wallaroo cluster grow` "
                f"without --live, which takes its state back")
    secret = load_secret(secret_path)
    t0 = trio.current_time()
    c = Coordinator(_addresses(sup), secret, refresh=lambda: _addresses(sup))
    try:
        await c.finish_under_way()
    except MoveFailed as e:
        raise GrowRefused(f"a live move under way could not be finished ({e}); "
                          f"nothing changed") from None
    old = list(sup.names)
    sup.names, sup.n = list(names), len(names)
    membership = None
    try:
        for name in old:
            answer = await c.ask(name, "LIVE_ADD_MEMBERS", {"members": names})
            membership = membership or answer["membership"]
            if membership is not None and name == old[0]:
                write_grown(directory, membership)
    except MoveFailed as e:
        sup.log.error("grow: %s", e)
        return {"error": f"the grow stopped after the members were told ({e}); "
                         f"run `wallaroo cluster grow --live` again to finish it"}
    sup.log.info("grow: %s took %s; starting %s", ", ".join(old), ", ".join(new),
                 ", ".join(new))
    from .supervisor import Member
    added = [Member(n) for n in new]
    for m in added:
        sup.members.append(m)
        sup._gen.start_soon(sup._keep_running, m, secret_path, sup._gen)
    sup.write_cluster_file()
    with trio.move_on_after(READY_WAIT):
        for m in added:
            while m.state != "ready" and not sup.stopping:
                await m.ready_event.wait()
                if m.state != "ready":
                    m.ready_event = trio.Event()
    not_ready = [m.name for m in added if m.state != "ready"]
    if not_ready:
        return {"error": f"{', '.join(not_ready)} did not become ready in "
                         f"{READY_WAIT:.0f}s (see their logs); the cluster has "
                         f"them as members, with no key groups yet: give them "
                         f"some with `wallaroo cluster move`"}
    try:
        os.unlink(os.path.join(directory, GROWN_FILE))
    except OSError:
        pass
    started = trio.current_time()
    c = Coordinator(_addresses(sup), secret, refresh=lambda: _addresses(sup))
    try:
        st = await c.statuses()
        current = ownership.decode(st[old[0]]["owners"], st[old[0]]["key_groups"],
                                   names)
        target = ownership.balanced_owners(current, names)
        reports = []
        for taker in new:
            groups = [g for g, o in enumerate(target) if o == taker and current[g] != taker]
            reports += await c.move(groups, taker)
    except MoveFailed as e:
        return {"error": f"the new members started, but giving them key groups "
                         f"stopped: {e}; `wallaroo cluster move` (or `grow --live` "
                         f"again) finishes it"}
    now = trio.current_time()
    moved = sum(len(r.groups) for r in reports)
    sup.log.info("grow: %d key groups moved live to %s in %d moves, %.2fs; the "
                 "longest wait of a moving group %.3fs", moved, ", ".join(new),
                 len(reports), now - started,
                 max((r.waited for r in reports), default=0.0))
    return {"ok": True, "members": list(names), "seconds": round(now - t0, 3),
            "moved": moved, "moves": len(reports),
            "longest_wait": round(max((r.waited for r in reports), default=0.0), 3),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
