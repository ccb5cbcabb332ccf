"""Rendering ``wallaroo recovery inspect``: rich tables over what
``wallaroo.recovery.inspect`` reads."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from ..recovery.inspect import WorkerInfo, undelivered


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


STREAMS_SHOWN = 10


def render(infos: list[WorkerInfo], console: Console, limit: int | None,
           all_streams: bool = False) -> None:
    for info in infos:
        console.rule(f"worker [bold]{info.worker}[/bold]")
        console.print(
            f"{info.path} ({_size(info.file_bytes)}, schema v{info.schema_version}); "
            f"lock: {info.lock}; position: {info.position}")
        console.print(
            f"application {info.application!r}, created {info.created_at}, "
            f"{info.commits} commits; next lsn {info.next_lsn}, replay from "
            f"{info.replay_from} ({info.next_lsn - info.replay_from} inputs to "
            f"replay after a crash)")
        if info.retired is not None:
            waiting = undelivered(info)
            console.print(
                f"[bold]retired[/bold] at {info.retired.get('at', '?')}: left the "
                f"cluster {'while it ran' if info.retired.get('live') else 'in a rescale'} "
                f"(now {', '.join(info.members or ['?'])}); "
                + (f"{waiting} outputs still wait for delivery" if waiting else
                   "nothing left to deliver") + "; its file is kept")
        elif info.members is not None and len(info.members) > 1:
            console.print(f"member of the cluster {', '.join(info.members)}")
        states = Table(title="states", title_justify="left")
        for col in ("state", "class", "partitions", "snapshotted", "snapshot bytes"):
            states.add_column(col, justify="right" if col[0] in "ps" and col != "state" else "left")
        for name, st in sorted(info.states.items()):
            states.add_row(name, st["class"], str(st["partitions"]),
                           str(st["snapshotted"]), _size(st["snapshot_bytes"]))
        console.print(states)
        total = info.partitions_total
        parts = Table(title="partitions" + (f" (first {limit} of {total}; "
                                            f"--all for every one)"
                                            if limit is not None and total > limit
                                            else ""), title_justify="left")
        for col in ("pid", "state", "key", "created at lsn", "snapshot lsn", "size", "pickler"):
            parts.add_column(col)
        shown = info.partitions if limit is None else info.partitions[:limit]
        for p in shown:
            parts.add_row(str(p.pid), p.state, p.key, str(p.created_lsn),
                          "never" if p.snapshot_lsn is None else str(p.snapshot_lsn),
                          _size(p.snapshot_bytes), p.pickler or "-")
        console.print(parts)
        if info.input_rows:
            lo, hi = info.input_lsns
            console.print(f"input log backlog: {info.input_messages} messages in "
                          f"{info.input_rows} rows, {_size(info.input_bytes)} "
                          f"(lsn {lo}..{hi})")
        else:
            console.print("input log backlog: empty")
        if info.pending_messages:
            console.print(f"pending input: {info.pending_messages} messages read "
                          f"before the last stop, processed first at the next "
                          f"start ({info.pending_rows} rows)")
        out = Table(title="outbox (sinks)", title_justify="left")
        for col in ("sink", "undelivered outputs", "rows", "bytes", "delivered",
                    "next output"):
            out.add_column(col)
        for o in info.outbox:
            out.add_row(f"{o['sink']}: {o.get('name', '')}", str(o["outputs"] or 0),
                        str(o["rows"]),
                        _size(o["bytes"] or 0), str(o["delivered"]), str(o["next_seq"]))
        console.print(out)
        _render_streams(info, console, all_streams)


def _render_streams(info: WorkerInfo, console: Console, all_streams: bool) -> None:
    if not info.streams:
        console.print("resumable streams: none")
        return
    rows = info.streams
    if not all_streams and len(rows) > STREAMS_SHOWN:
        rows = sorted(rows, key=lambda s: -(s["last_seen"] or 0))[:STREAMS_SHOWN]
        title = (f"resumable streams: {len(info.streams)}, "
                 f"{sum(s['durable'] for s in info.streams)} durable messages in "
                 f"all; the {STREAMS_SHOWN} seen last (--streams for every one)")
    else:
        title = f"resumable streams ({len(rows)})"
    if len(rows) > 1000:  # a table of that many rows is slow to lay out
        console.print(title + "; source, stream, durable messages, last seen:")
        out = console.file
        for s in rows:
            t = s["last_seen"]
            out.write(f"{s['source']}\t{s['stream']}\t{s['durable']}\t"
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t)) if t else '-'}\n")
        return
    table = Table(title=title, title_justify="left")
    for col in ("source (pipeline)", "stream", "durable messages", "last seen"):
        table.add_column(col)
    for s in rows:
        t = s["last_seen"]
        table.add_row(s["source"], s["stream"], str(s["durable"]),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-")
    console.print(table)
