"""``wallaroo status``: every worker of a cluster, asked on its control port.

One host: ``wallaroo status DIR`` reads ``DIR/cluster.json`` (written by the
supervisor) and the secret beside it.  Several hosts: ``--control H:P
--cluster-secret-file F`` asks that worker for the membership, then every
member.  A worker that does not answer is shown with the state it has in
``cluster.json`` (or ``unreachable``) and the reason.

The ``--json`` shape::

    {"application": "alphabet" | null,
     "workers": [{"name": "initializer", "state": "ready", "pid": 123,
                  "restarts": 0, "control": "127.0.0.1:4001",
                  "data": "127.0.0.1:4002", "key_groups": 512,
                  "partitions": 13, "last_commit_age": 0.2, "commits": 40,
                  "messages_in": 1000, "outputs": 1000, "failures": 0,
                  "inbox": {"messages": 0, "bytes": 0},
                  "sinks": [{"sink": "...", "outputs": 0, "bytes": 0}],
                  "channels": [{"peer": "worker-1", "batches": 0, "bytes": 0}],
                  "error": "..." (only when it did not answer)}, ...],
     "rescale": {"from": [...], "to": [...], "phase": "draining" | "moving",
                 "since": "..."} (only while the cluster rescales)}
"""

from __future__ import annotations

import json
import os

import trio

from ..connectors import auth
from ..runtime.control import ASK_ERRORS, ask
from . import ToolError
from .common import parse_address


def _split(text: str) -> tuple[str, int]:
    return parse_address(text, "address")


async def _ask_all(entries: list[dict], secret: bytes) -> list[dict]:
    out = [dict(e) for e in entries]

    async def one(e: dict) -> None:
        if not e.get("control"):
            e.setdefault("error", "no control address (not ready)")
            return
        try:
            answer = await ask(_split(e["control"]), secret, "STATUS", timeout=5)
        except ASK_ERRORS as err:
            e["error"] = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            if e.get("state") == "ready":
                e["state"] = "unreachable"
            return
        for k, v in answer.items():
            if k not in ("name",):
                e[k] = v
    async with trio.open_nursery() as nursery:
        for e in out:
            nursery.start_soon(one, e)
    return out


def status_from_dir(directory: str, secret_file: str | None = None) -> dict:
    path = os.path.join(directory, "cluster.json")
    try:
        with open(path) as f:
            body = json.load(f)
    except FileNotFoundError:
        raise ToolError(f"{path} does not exist: is {directory} the "
                        f"--resilience-dir of a `wallaroo run --workers N` "
                        f"cluster (or the directory its ready line names)?") from None
    except (OSError, ValueError) as e:
        raise ToolError(f"cannot read {path}: {e}") from None
    if body.get("several_hosts"):  # one worker's own entry: ask it for all
        if not secret_file:
            raise ToolError(f"{path} is the entry of worker "
                            f"{body['workers'][0]['name']!r} of a cluster over "
                            f"several hosts: give --cluster-secret-file too")
        control = body["workers"][0].get("control")
        if body["workers"][0].get("state") != "ready" or not control:
            raise ToolError(f"worker {body['workers'][0]['name']!r} is "
                            f"{body['workers'][0].get('state')} ({path})")
        return status_from_control(control, secret_file)
    secret = auth.load_secret(secret_file or os.path.join(directory, "cluster.secret"))
    entries = [{k: w.get(k) for k in ("name", "state", "pid", "restarts",
                                      "control", "data")} for w in body["workers"]]
    workers = trio.run(_ask_all, entries, secret)
    out = {"application": body.get("application"), "workers": workers}
    if body.get("rescale"):
        out["rescale"] = body["rescale"]
    return out


def status_from_control(control: str, secret_file: str) -> dict:
    secret = auth.load_secret(secret_file)

    async def main():
        try:
            members = await ask(_split(control), secret, "MEMBERS", timeout=5)
        except ASK_ERRORS as e:
            raise ToolError(f"cannot ask {control}: {e}") from None
        addresses = members.get("addresses") or {}
        entries = [{"name": n, "state": "ready", "control": addresses.get(
            n, {}).get("control"), "data": addresses.get(n, {}).get("data")}
            for n in members["members"]]
        return await _ask_all(entries, secret)
    workers = trio.run(main)
    out = {"application": None, "workers": workers}
    moving = [w["rescale"] for w in workers if isinstance(w.get("rescale"), dict)]
    if moving:  # several hosts: a rescale in progress, as its workers say
        out["rescale"] = max(moving, key=lambda r: r.get("phase") == "moving")
    return out


def render(status: dict, console) -> None:
    from rich.table import Table
    t = Table(title=f"cluster of application {status['application']!r}"
              if status.get("application") else "cluster", title_justify="left")
    for col in ("worker", "state", "pid", "restarts", "groups", "partitions",
                "commit age", "inbox", "sink backlog", "channel backlog"):
        t.add_column(col, justify="left" if col in ("worker", "state") else "right")
    for w in status["workers"]:
        age = w.get("last_commit_age")
        t.add_row(w["name"], w.get("state") or "-", str(w.get("pid") or "-"),
                  "-" if w.get("restarts") is None else str(w["restarts"]),
                  str(w.get("key_groups", "-")), str(w.get("partitions", "-")),
                  f"{age:.1f}s" if isinstance(age, (int, float)) else "-",
                  str(w["inbox"]["messages"]) if "inbox" in w else "-",
                  str(sum(s["outputs"] for s in w["sinks"])) if "sinks" in w else "-",
                  str(sum(c["batches"] for c in w["channels"]))
                  if "channels" in w else "-")
    console.print(t)
    console.print("inbox: messages waiting; sink backlog: outputs not yet "
                  "delivered; channel backlog: peer batches not yet "
                  "acknowledged")
    for w in status["workers"]:
        if w.get("error"):
            console.print(f"{w['name']}: {w['error']}")
    for w in status["workers"]:
        m = w.get("live_move")
        if m:
            console.print(f"live move {m['epoch']} under way: {m['groups']} key "
                          f"groups {m['giver']} -> {w['name']}, their messages "
                          f"waiting at {w['name']} ({m['waiting_batches']} "
                          f"batches) for the hand-over")
    r = status.get("rescale")
    if r:
        console.print(f"rescaling from {len(r['from'])} workers ({', '.join(r['from'])}) "
                      f"to {len(r['to'])} ({', '.join(r['to'])}): {r['phase']} "
                      f"since {r['since']}")
