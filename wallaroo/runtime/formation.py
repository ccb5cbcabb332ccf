"""Forming a cluster over several hosts (DESIGN.md §6), with Wallaroo's
flags:

    initializer:   wallaroo run APP --cluster-initializer --worker-count N
                       --control H:P --data H:P --cluster-secret-file F ...
    every other:   wallaroo run APP --control <initializer's control H:P>
                       --name W --my-control H:P --my-data H:P
                       --cluster-secret-file F ...

The initializer listens on its control port until the other N-1 workers
have joined (``JOIN <name> <control> <data>``), then answers each with the
membership: the initializer first, then the others by name, with every
member's addresses.  Each worker saves it in its database; from then on the
membership is fixed: any worker, the initializer included, restarted with
its original command line finds it there and rejoins the others directly,
and a run that does not match it is refused.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3

import trio

from .control import ASK_ERRORS, ControlServer, ask
from .placement import DEFAULT_KEY_GROUPS


class FormationError(Exception):
    """The cluster cannot form, or this run does not match it."""


def saved_membership(resilience_dir: str | None, name: str) -> dict | None:
    """The membership a worker's database holds (read-only), if any."""
    if not resilience_dir:
        return None
    path = os.path.join(resilience_dir, f"{name}.db")
    if not os.path.exists(path):
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='membership'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # the store reports what is wrong with it
    if row is None:
        return None
    body = json.loads(row[0])
    body.pop("checksum", None)  # the store checks it when it opens
    return body


def check_saved(saved: dict, name: str, control: str, data: str,
                worker_count: int | None) -> None:
    members = saved["members"]
    if name not in members:
        raise FormationError(f"this resilience directory belongs to a cluster of "
                             f"{members}, which has no worker {name!r}")
    # --worker-count binds until a rescale, or a live grow (rule_workers)
    if worker_count is not None and worker_count != len(members) \
            and not saved.get("rescaled") and "rule_workers" not in saved:
        raise FormationError(
            f"the cluster was formed with {len(members)} workers ({', '.join(members)}); "
            f"this run says --worker-count {worker_count}.  Start it with its "
            f"original command line.")
    mine = saved.get("addresses", {}).get(name, {})
    if (mine.get("control"), mine.get("data")) != (control, data):
        raise FormationError(
            f"worker {name!r} was formed with control {mine.get('control')} and data "
            f"{mine.get('data')}; this run gives {control} and {data}.  The other "
            f"workers reach it at the formed addresses: start it with its original "
            f"command line.")


async def initialize(control: tuple[str, int], name: str, control_text: str,
                     data_text: str, worker_count: int, secret: bytes,
                     log: logging.Logger) -> dict:
    """The initializer: wait for the others to join; the membership."""
    joined: dict[str, dict] = {name: {"control": control_text, "data": data_text}}
    done = trio.Event()
    membership: dict = {}

    async def join(who: str, ctl: str, dat: str) -> dict:
        if done.is_set():
            if who in membership["members"]:
                return membership
            return {"error": f"the cluster is formed ({membership['members']}); "
                             f"{who!r} is not a member"}
        if who in joined and joined[who] != {"control": ctl, "data": dat}:
            return {"error": f"a worker named {who!r} already joined from "
                             f"{joined[who]['control']}"}
        joined[who] = {"control": ctl, "data": dat}
        log.info("worker %s joined (%d of %d)", who, len(joined), worker_count)
        if len(joined) == worker_count:
            others = sorted(n for n in joined if n != name)
            membership.update({"members": [name] + others,
                               "key_groups": DEFAULT_KEY_GROUPS,
                               "addresses": joined})
            done.set()
        await done.wait()
        return membership

    server = ControlServer(name, secret, log, status=lambda: {"state": "forming"},
                           members=lambda: {"forming": sorted(joined)}, join=join)
    await server.bind(*control)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        log.info("forming a cluster of %d workers: waiting on %s for the others "
                 "to join", worker_count, control_text)
        if worker_count > 1:
            await done.wait()
            # every JOIN handler counts as answering from its start, so this
            # waits until each joiner has its answer
            await server.answered(0.5)
        else:
            membership.update({"members": [name], "key_groups": DEFAULT_KEY_GROUPS,
                               "addresses": joined})
        nursery.cancel_scope.cancel()
    for ls in server.listeners:
        await ls.aclose()
    return membership


async def join(initializer: tuple[str, int], name: str, control_text: str,
               data_text: str, secret: bytes, log: logging.Logger) -> dict:
    """A worker: join through the initializer's control port (retrying
    until it is up); the membership."""
    answer = await _ask_retrying(initializer, secret,
                                 f"JOIN {name} {control_text} {data_text}", name,
                                 3600, log, "joining the cluster")
    if "error" in answer:
        raise FormationError(f"the initializer at {initializer[0]}:"
                             f"{initializer[1]} refused: {answer['error']}")
    return answer


async def _ask_retrying(contact: tuple[str, int], secret: bytes, line: str,
                        me: str, timeout: float, log: logging.Logger,
                        doing: str) -> dict:
    """Ask ``contact`` until the answer is not "try again": a worker that
    is not up yet, restarting or closing before it answers, and an answer
    with ``retry`` (busy with another rescale), are asked again after 0.1 s,
    doubling to 2 s; logged when the reason changes and every 30th try."""
    delay, attempts, noted = 0.1, 0, None
    while True:
        attempts += 1
        try:
            answer = await ask(contact, secret, line, me=me, timeout=timeout)
        except ASK_ERRORS as e:
            answer = {"error": str(e) or type(e).__name__, "retry": True}
        if not answer.get("retry"):
            return answer
        if answer["error"] != noted or attempts % 30 == 0:
            noted = answer["error"]
            log.info("%s through %s:%d: %s; retrying", doing, *contact,
                     answer["error"])
        await trio.sleep(delay)
        delay = min(2.0, delay * 2)


class Retired(Exception):
    """This worker left its cluster in a rescale (its database is marked
    retired): it only delivers what it still holds."""


async def grow(contact: tuple[str, int], name: str, control_text: str,
               data_text: str, secret: bytes, resilience_dir: str | None,
               log: logging.Logger) -> None:
    """A worker that joins a running cluster (``--join``): ask any member
    to grow the cluster by it (retrying while it is down or busy with
    another rescale); once accepted, the plan is saved in this worker's
    plan file and it waits in move mode (``host_rescale.py``)."""
    from ..recovery.moves import Plan
    from .host_rescale import write_plan_file
    if resilience_dir is None:
        raise FormationError("a worker joining a running cluster (--join) needs "
                             "--resilience-dir: it takes its share of the state")
    body = {"name": name, "control": control_text, "data": data_text}
    answer = await _ask_retrying(contact, secret, "GROW " + json.dumps(body), name,
                                 60, log, "joining the running cluster")
    if "accepted" not in answer:
        raise FormationError(f"the cluster at {contact[0]}:{contact[1]} "
                             f"refused to grow by {name!r}: {answer.get('error', answer)}")
    plan = Plan.from_json(answer["plan"])
    write_plan_file(resilience_dir, name, plan, "joining", plan.old[0])
    log.info("joining the cluster of %s: rescale %s accepted by %s",
             ", ".join(plan.old), plan.id, answer.get("coordinator"))


async def grow_live(contact: tuple[str, int], name: str, control_text: str,
                    data_text: str, secret: bytes, resilience_dir: str | None,
                    log: logging.Logger) -> dict:
    """A worker that joins a running cluster while it runs (``--join
    --live``, host_live_grow.py): ask any member until every member has
    taken this one; the membership it starts from (it owns nothing yet;
    the first member then moves its share of the key groups to it)."""
    if resilience_dir is None:
        raise FormationError("a worker joining a running cluster (--join) needs "
                             "--resilience-dir: it takes its share of the state")
    body = {"name": name, "control": control_text, "data": data_text, "live": True}
    answer = await _ask_retrying(contact, secret, "GROW " + json.dumps(body), name,
                                 60, log, "joining the running cluster")
    membership = answer.get("membership")
    if not isinstance(membership, dict) or name not in membership.get("members", ()):
        raise FormationError(f"the cluster at {contact[0]}:{contact[1]} "
                             f"refused to grow by {name!r}: {answer.get('error', answer)}")
    log.info("joining the cluster of %s while it runs (coordinated by %s)",
             ", ".join(m for m in membership["members"] if m != name),
             answer.get("coordinator"))
    return membership
