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
from ..recovery.files import atomic_write
from . import live_members
from .cluster_side import GROWN_FILE
from .formation import saved_membership
from .live_coordinator import Coordinator, MoveFailed
from .live_moves import LiveMoveError
from .rescale import RescaleRefused, control_addresses

READY_WAIT = 120.0  # seconds a new member may take to start
# how long a member may take to answer a step of the grow before it stops
# half-way (the next `grow --live` finishes it); tests make it short
WAIT = float(os.environ.get("WALLAROO_GROW_WAIT", "600"))


class GrowRefused(RescaleRefused):
    """The cluster cannot grow live as asked (the message says why)."""


def coordinator(sup, secret: bytes) -> Coordinator:
    """A coordinator of live moves over ``sup``'s members (their control
    addresses read again when one restarted)."""
    return Coordinator(control_addresses(sup.members), secret, timeout=WAIT,
                       refresh=lambda: control_addresses(sup.members))


def write_grown(directory: str, membership: dict) -> None:
    """``membership.json``, replaced whole and synced: the new members
    start from it."""
    atomic_write(os.path.join(directory, GROWN_FILE),
                 (json.dumps(membership, indent=1) + "\n").encode())


def _grown_membership(directory: str, first: str, names: list[str]) -> dict:
    """The membership every member will commit (live_members.grown), from
    what the first member's database saved: written for the new members
    before any member takes them, so a supervisor stopped half-way leaves
    it for the next start."""
    saved = saved_membership(directory, first)
    if saved is None:
        raise GrowRefused(f"{first}.db in {directory} holds no membership "
                          f"(a worker that never started?); nothing changed")
    if saved["members"] == names:  # a grow resumed: taken already
        return saved
    try:
        return live_members.grown(saved, names, live_members.saved_owner_names(saved))
    except LiveMoveError as e:
        raise GrowRefused(f"{e}; nothing changed") from None


async def grow_live(sup, names: list[str], secret_path: str) -> dict:
    """Grow ``sup``'s running cluster to ``names``; the answer for
    ``wallaroo cluster grow --live``.  A grow that stopped half-way (a
    member did not answer) is resumed by the next one, whatever its
    count (``sup.pending_grow``)."""
    directory = sup.resilience_dir
    pending = sup.pending_grow
    if pending is not None:
        names, old = pending["names"], pending["old"]
        sup.log.info("grow --live: finishing the grow from %s to %s first",
                     ", ".join(old), ", ".join(names))
    else:
        old = list(sup.names)
    joining = [n for n in names if n not in old]
    if any(s.next_fire is not None for s in sup.spec.states):
        raise GrowRefused("applications with windows cannot grow live yet: "
                          "`wallaroo cluster grow` without --live rescales them")
    if pending is None:
        for name in joining:
            if os.path.exists(moves.db_file(directory, name)):
                raise GrowRefused(
                    f"{directory} holds a database for {name!r} (a worker that "
                    f"left the cluster): it comes back with `wallaroo cluster "
                    f"grow` without --live, which takes its state back")
    secret = load_secret(secret_path)
    t0 = trio.current_time()
    c = coordinator(sup, secret)
    try:
        await c.finish_under_way()
    except MoveFailed as e:
        raise GrowRefused(f"a live move under way could not be finished ({e}); "
                          f"nothing changed") from None
    membership = _grown_membership(directory, old[0], names)
    write_grown(directory, membership)
    # from here on a member restarted by the supervisor takes the new
    # members when it starts (live_members.py), and until the grow is done
    # the next `grow --live` finishes it
    sup.names, sup.n = list(names), len(names)
    sup.pending_grow = {"names": list(names), "old": old}
    try:
        for name in old:
            c.deadline = time.monotonic() + WAIT  # for each member
            answer = await c.ask(name, "LIVE_ADD_MEMBERS", {"members": names})
            if answer["membership"] != membership:
                raise MoveFailed(f"{name} took another membership than "
                                 f"{GROWN_FILE} says")
    except MoveFailed as e:
        return _stopped(sup, names, f"telling the members: {e}")
    sup.log.info("grow: %s took %s; starting %s", ", ".join(old),
                 ", ".join(joining), ", ".join(joining))
    from .supervisor import Member
    running = {m.name for m in sup.members}
    for name in joining:
        if name not in running:
            m = Member(name)
            sup.members.append(m)
            sup._gen.start_soon(sup._keep_running, m, secret_path, sup._gen)
    added = [m for m in sup.members if m.name in joining]
    sup.write_cluster_file()
    with trio.move_on_after(READY_WAIT):
        for m in added:
            while m.state != "ready" and not sup.stopping:
                await m.ready_event.wait()
                if m.state != "ready":
                    m.ready_event = trio.Event()
    not_ready = [m.name for m in added if m.state != "ready"]
    if not_ready:
        return _stopped(sup, names, f"{', '.join(not_ready)} did not become "
                                    f"ready in {READY_WAIT:.0f}s (see their logs)")
    try:
        os.unlink(os.path.join(directory, GROWN_FILE))
    except OSError:
        pass
    started = trio.current_time()
    c = coordinator(sup, secret)
    try:
        st = await c.statuses()
        current = ownership.decode(st[old[0]]["owners"], st[old[0]]["key_groups"],
                                   names)
        target = ownership.balanced_owners(current, names)
        reports = []
        for taker in joining:
            groups = [g for g, o in enumerate(target) if o == taker and current[g] != taker]
            reports += await c.move(groups, taker)
    except MoveFailed as e:
        return _stopped(sup, names, f"giving the new members key groups: {e}")
    sup.pending_grow = None
    now = trio.current_time()
    moved = sum(len(r.groups) for r in reports)
    sup.log.info("grow: %d key groups moved live to %s in %d moves, %.2fs; the "
                 "longest wait of a moving group %.3fs", moved, ", ".join(joining),
                 len(reports), now - started,
                 max((r.waited for r in reports), default=0.0))
    return {"ok": True, "members": list(names), "seconds": round(now - t0, 3),
            "moved": moved, "moves": len(reports),
            "longest_wait": round(max((r.waited for r in reports), default=0.0), 3),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _stopped(sup, names: list[str], why: str) -> dict:
    sup.log.error("grow --live to %s stopped: %s; the next `wallaroo cluster "
                  "grow --live` finishes it", ", ".join(names), why)
    return {"error": f"the grow to {len(names)} workers ({', '.join(names)}) "
                     f"stopped: {why}.  Run `wallaroo cluster grow --live` again: "
                     f"it finishes this grow first"}
