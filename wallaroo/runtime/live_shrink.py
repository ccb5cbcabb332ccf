"""``wallaroo cluster shrink --live``: members of a one-host cluster that
joined it while it ran (``grow --live``) leave while it runs, the
supervisor coordinating (docs/design/live-moves.md, step 2, reversed):

1. a live move left under way is finished first;
2. live moves (``runtime/live_coordinator.py``) give the leaving members'
   key groups to the others, as a rescale to the members that stay would
   place them (``ownership.balanced_owners``), while every group flows;
3. the leaving members close their sources and the supervisor hands them
   no new client, restarts included (a resumable client reconnects, to
   another member, and resumes from what was committed); until nothing is
   in flight to or from them, twice in a row with the same counts: their
   inbox, their commit path, their channels and every other member's
   channel to them empty, their sinks' outputs delivered (for at most
   ``rescale.LEAVING_WAIT``: what is left is delivered by the retired
   worker run on its own, as after a rescale);
4. every other member drops them (``LIVE_REMOVE_MEMBERS``, one commit
   each between two batches, saving their channels' last positions)
   while they still run: a member that crashes before its commit starts
   again with every member, gets their acknowledgements again, and is
   asked again;
5. they stop and are not restarted; their databases are checked (nothing
   left for the others) and marked retired (``wallaroo recovery inspect``
   shows it) with the membership the others went on with, the last
   first, and the supervisor's member list loses them.

Only the members that joined live, and only the last ones, leave this way:
resumable streams and Kafka partitions belong to the members before the
first live grow by rule (``rule_workers``), and members are numbered by
their place in the list.  Any other shrink drains and stops the cluster
(``wallaroo cluster shrink`` without --live).

A crash of any worker, or of the command, during steps 1-4 leaves a
cluster whose leaving members own nothing (or some of their groups):
``shrink --live`` again goes on from there.  From step 4 until the shrink
is done (``sup.pending_shrink``), a member the supervisor restarts starts
with the member list its own database holds (``Supervisor._members_for``),
and once the leaving members stopped every member's list is checked.  A supervisor stopped before
step 5 leaves them members (``rescale.saved_cluster`` counts the
databases that dropped them with those that did not as the longer
cluster, as after a grow stopped half-way).
"""

from __future__ import annotations

import signal
import sqlite3
import time

import trio

from ..connectors.auth import load_secret
from ..recovery import moves, ownership
from ..recovery.errors import StoreError
from . import live_members
from .control import ask
from .formation import saved_membership
from .live_coordinator import MoveFailed
from .live_grow import WAIT, coordinator
from .live_moves import LiveMoveError
from .rescale import LEAVING_WAIT, QUIET_POLL, RescaleRefused

STOP_WAIT = 60.0  # seconds a drained leaving member may take to stop


class ShrinkRefused(RescaleRefused):
    """The cluster cannot shrink live as asked (the message says why)."""


def _shrunk_membership(directory: str, first: str, names: list[str]) -> dict:
    """The membership the others will commit (live_members.shrunk), checked
    before anything moves: the leaving members joined live and are last."""
    saved = saved_membership(directory, first)
    if saved is None:
        raise ShrinkRefused(f"{first}.db in {directory} holds no membership; "
                            f"nothing changed")
    rule = saved.get("rule_workers", len(saved["members"]))
    if not live_members.extends(saved["members"], names):
        raise ShrinkRefused(
            f"only the members that joined last leave while the cluster runs "
            f"(members: {', '.join(saved['members'])}); `wallaroo cluster "
            f"shrink` without --live drains and restarts the cluster for any "
            f"other; nothing changed")
    if len(names) < rule:
        raise ShrinkRefused(
            f"{', '.join(saved['members'][len(names):rule])} did not join while "
            f"the cluster ran: resumable streams and Kafka partitions are theirs "
            f"by rule.  `wallaroo cluster shrink` without --live moves them; "
            f"nothing changed")
    body = dict(saved)  # their key groups are given away first
    body["owners"] = ownership.encode(ownership.balanced_owners(
        live_members.saved_owner_names(saved), names))
    try:
        return live_members.shrunk(body, names)
    except LiveMoveError as e:
        raise ShrinkRefused(f"{e}; nothing changed") from None


async def shrink_live(sup, names: list[str], secret_path: str) -> dict:
    """Shrink ``sup``'s running cluster to ``names``; the answer for
    ``wallaroo cluster shrink --live``.  A shrink that stopped after the
    members began dropping the leaving ones (``sup.pending_shrink``) goes
    on from there."""
    directory = sup.resilience_dir
    secret = load_secret(secret_path)
    t0 = trio.current_time()
    pending = sup.pending_shrink
    if pending is not None and sup.names == names:  # they stopped already
        return await _finish(sup, secret, names, pending["old"], t0, [])
    old = list(sup.names)
    leaving = [n for n in old if n not in names]
    if any(s.next_fire is not None for s in sup.spec.states):
        raise ShrinkRefused("applications with windows cannot shrink live yet: "
                            "`wallaroo cluster shrink` without --live rescales them")
    if pending is None:  # (a shrink resumed: some dropped them already)
        _shrunk_membership(directory, old[0], names)
    c = coordinator(sup, secret)
    try:
        reports = await give_away(c, old, names)
    except MoveFailed as e:
        return _stopped(names, f"giving their key groups away: {e}")
    moved = sum(len(r.groups) for r in reports)
    sup.log.info("shrink: %d key groups of %s moved live in %d moves; draining "
                 "them", moved, ", ".join(leaving), len(reports))
    gone = [m for m in sup.members if m.name in leaving]
    for m in gone:  # no client for them from now on, restarts included
        m.draining = True
    drained = await _drain(sup, secret, gone)
    if drained is not None:
        if sup.pending_shrink is None:  # nothing dropped them yet: they go
            for m in gone:  # on as members, restarted to open their sources
                m.draining = m.stopping = False
                if m.proc is not None and m.proc.returncode is None:
                    m.proc.send_signal(signal.SIGTERM)
        return _stopped(names, drained)
    # every other worker drops them while they still run: one that crashes
    # before its commit gets their acknowledgements again when it restarts
    # with every member, and is asked again; until the shrink is done a
    # restarted member starts with the member list its database holds
    sup.pending_shrink = {"names": list(names), "old": old}
    c = coordinator(sup, secret)
    try:
        for name in names:
            c.deadline = time.monotonic() + WAIT
            answer = await c.ask(name, "LIVE_REMOVE_MEMBERS", {"members": names})
            if answer["membership"]["members"] != names:
                raise MoveFailed(f"{name} kept the members "
                                 f"{', '.join(answer['membership']['members'])}")
    except MoveFailed as e:  # they stay, running, with no client
        return _stopped(names, f"the others dropping {', '.join(leaving)}: {e}")
    if sup.stopping:
        return _stopped(names, "the cluster is stopping")
    # they stop and are not restarted; the supervisor's member list loses
    # them as each ends (Supervisor._keep_running)
    for m in gone:
        m.leaving = True
        if m.proc is not None and m.proc.returncode is None:
            if not sup._send(m, {"stop": "drained"}):
                m.proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_WAIT):
        while any(m in sup.members for m in gone):
            await trio.sleep(QUIET_POLL)
    for m in gone:
        if m in sup.members and m.proc is not None and m.proc.returncode is None:
            sup.log.error("shrink: %s did not stop within %.0fs; killing it "
                          "(it held nothing)", m.name, STOP_WAIT)
            m.proc.kill()
    while any(m in sup.members for m in gone):
        await trio.sleep(QUIET_POLL)
    sup.names, sup.n = list(names), len(names)
    sup.write_cluster_file()
    return await _finish(sup, secret, names, old, t0, reports)


async def _finish(sup, secret: bytes, names: list[str], old: list[str], t0: float,
                  reports: list) -> dict:
    """The leaving workers stopped: every member on the short list (one
    restarted in between included), their databases checked and retired."""
    directory = sup.resilience_dir
    leaving = [n for n in old if n not in names]
    try:
        c = coordinator(sup, secret)
        for name, st in (await c.statuses()).items():
            if st.get("members") != names:
                c.deadline = time.monotonic() + WAIT
                await c.ask(name, "LIVE_REMOVE_MEMBERS", {"members": names})
    except MoveFailed as e:
        return _stopped(names, f"checking the members after {', '.join(leaving)} "
                               f"stopped: {e}")
    sup.pending_shrink = None
    held = _still_held(directory, leaving)
    if held:  # the drain said nothing was left: not retired, kept whole
        why = "; ".join(f"{n}: {', '.join(p)}" for n, p in held.items())
        sup.log.error("shrink: %s stopped still holding %s: not retired.  Start "
                      "the cluster again with --workers %d: it takes them back "
                      "and delivers it", ", ".join(held), why, len(old))
        return {"error": f"{', '.join(held)} stopped still holding {why}; they "
                         f"are not retired: start the cluster again with "
                         f"--workers {len(old)} to deliver it"}
    membership = saved_membership(directory, old[0])  # the others' now
    try:  # the last first: a retired set is always the end of the list
        for name in reversed(leaving):
            moves.mark_retired(directory, name, membership)
    except (StoreError, OSError) as e:
        sup.log.error("shrink: cannot mark %s retired: %s", ", ".join(leaving), e)
    if any(moves.undelivered_outputs(directory, n) for n in leaving):
        from .rescale import deliver_retired
        sup._gen.start_soon(deliver_retired, sup)
    now = trio.current_time()
    sup.log.info("shrink: %s left; %d workers (%s) in %.2fs", ", ".join(leaving),
                 len(names), ", ".join(names), now - t0)
    return {"ok": True, "members": list(names), "seconds": round(now - t0, 3),
            "moved": sum(len(r.groups) for r in reports), "moves": len(reports),
            "longest_wait": round(max((r.waited for r in reports), default=0.0), 3),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


async def give_away(c, old: list[str], names: list[str]) -> list:
    """Steps 1 and 2: a live move under way finished, then the key groups
    of the members of ``old`` not in ``names`` moved, by ``c``'s live
    moves, to where a rescale to ``names`` would place them."""
    await c.finish_under_way()
    st = await c.statuses()
    current = ownership.decode(st[old[0]]["owners"], st[old[0]]["key_groups"], old)
    target = ownership.balanced_owners(current, names)
    reports = []
    for taker in names:
        groups = [g for g, o in enumerate(target)
                  if o == taker and current[g] not in names]
        if groups:
            reports += await c.move(groups, taker)
    return reports


def held_by_leaving(answers: dict[str, dict], leaving, count_sinks: bool) -> list[str]:
    """From every member's STATUS answer: what is still in flight to or
    from the ``leaving`` members (empty: nothing); their sinks' outputs
    count while ``count_sinks``."""
    held = []
    for name, a in answers.items():
        for ch in a.get("channels", ()):
            if (name in leaving or ch.get("peer") in leaving) and ch.get("batches", 1):
                held.append(f"{name} -> {ch.get('peer')}: {ch['batches']} batches")
        if name in leaving:
            if a.get("inbox", {}).get("messages", 1):
                held.append(f"{name}'s inbox: {a['inbox']['messages']} messages")
            if a.get("in_hand", 1):  # a batch computed, not yet released
                held.append(f"{name}: {a.get('in_hand')} batches being committed")
            if a.get("acks_pending"):  # saved by its next (idle) commit
                held.append(f"{name}: {a['acks_pending']} delivery positions "
                            f"not yet committed")
            outputs = sum(s.get("outputs", 0) for s in a.get("sinks", ()))
            if outputs and count_sinks:
                held.append(f"{name}'s sinks: {outputs} outputs")
    return held


def leaving_counts(answers: dict[str, dict], leaving) -> tuple:
    """The counts of the leaving members that must stand still between two
    looks for the drain to be over."""
    return tuple((answers[n].get("messages_in"), answers[n].get("outputs"),
                  answers[n].get("commits")) for n in sorted(leaving))


def undelivered(answers: dict[str, dict], leaving) -> dict[str, int]:
    """Outputs each leaving member's sinks still wait for (none: left out)."""
    waiting = {n: sum(s.get("outputs", 0) for s in answers[n].get("sinks", ()))
               for n in sorted(leaving)}
    return {n: k for n, k in waiting.items() if k}


def _still_held(directory: str, leaving: list[str]) -> dict[str, list[str]]:
    """What the stopped leaving workers' databases hold for other workers
    (input not processed, peer batches not acknowledged); empty: nothing."""
    held = {}
    for name in leaving:
        try:
            problems = [p for p in moves.check_quiet(directory, name)
                        if "peer batches" in p or "rows of input" in p]
        except (StoreError, OSError, sqlite3.Error) as e:
            problems = [f"an unreadable database ({e})"]
        if problems:
            held[name] = problems
    return held


async def _drain(sup, secret: bytes, gone: list) -> str | None:
    """Until nothing is in flight to or from the members ``gone`` (their
    sources closed), twice in a row with the same counts; None when
    drained, or why not (in ``WAIT`` seconds)."""
    leaving = {m.name for m in gone}
    last = None
    sinks_until = trio.current_time() + LEAVING_WAIT
    deadline = trio.current_time() + WAIT
    why = "nothing answered"
    while trio.current_time() < deadline and not sup.stopping:
        for m in gone:  # again after a restart: it opened them again
            m.stopping = True
            sup._send(m, {"drain": True})
        await trio.sleep(QUIET_POLL)
        try:
            answers = {}
            for m in sup.members:
                if m.state != "ready" or not m.control:
                    raise OSError(f"worker {m.name} is {m.state}")
                host, _, port = m.control.rpartition(":")
                answers[m.name] = await ask((host, int(port)), secret, "STATUS",
                                            me="supervisor", timeout=5)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError) as e:
            last, why = None, str(e)
            continue
        held = held_by_leaving(answers, leaving, trio.current_time() < sinks_until)
        counts = leaving_counts(answers, leaving)
        if held:
            last, why = None, "; ".join(held)
            continue
        if counts == last:
            waiting = undelivered(answers, leaving)
            if waiting:
                sup.log.warning(
                    "shrink: leaving workers still hold undelivered outputs after "
                    "%.0fs (%s): they stay in their databases, marked retired, and "
                    "are delivered from there", LEAVING_WAIT,
                    ", ".join(f"{n}: {k}" for n, k in waiting.items()))
            return None
        last = counts
    return f"draining {', '.join(sorted(leaving))} took over {WAIT:.0f}s ({why})"


def _stopped(names: list[str], why: str) -> dict:
    return {"error": f"the shrink to {len(names)} workers ({', '.join(names)}) "
                     f"stopped: {why}.  Nothing is lost; run `wallaroo cluster "
                     f"shrink --live` again to go on from there"}
