"""Rendering ``wallaroo recovery inspect``: rich tables over what
``wallaroo.recovery.inspect`` reads."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..recovery.inspect import WorkerInfo


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(infos: list[WorkerInfo], console: Console, limit: int | None) -> None:
    for info in infos:
        console.rule(f"worker [bold]{info.worker}[/bold]")
        console.print(
            f"{info.path} ({_size(info.file_bytes)}, schema v{info.schema_version}); "
            f"lock: {info.lock}")
        console.print(
            f"application {info.application!r}, created {info.created_at}, "
            f"{info.commits} commits; next lsn {info.next_lsn}, replay from "
            f"{info.replay_from} ({info.next_lsn - info.replay_from} inputs to "
            f"replay after a crash)")
        states = Table(title="states", title_justify="left")
        for col in ("state", "class", "partitions", "snapshotted", "snapshot bytes"):
            states.add_column(col, justify="right" if col[0] in "ps" and col != "state" else "left")
        for name, st in sorted(info.states.items()):
            states.add_row(name, st["class"], str(st["partitions"]),
                           str(st["snapshotted"]), _size(st["snapshot_bytes"]))
        console.print(states)
        parts = Table(title="partitions" + (f" (first {limit} of {len(info.partitions)}; "
                                            f"--all for every one)"
                                            if limit is not None and len(info.partitions) > limit
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
        out = Table(title="outbox (sinks)", title_justify="left")
        for col in ("sink", "undelivered outputs", "rows", "bytes", "delivered",
                    "next output"):
            out.add_column(col)
        for o in info.outbox:
            out.add_row(str(o["sink"]), str(o["outputs"] or 0), str(o["rows"]),
                        _size(o["bytes"] or 0), str(o["delivered"]), str(o["next_seq"]))
        console.print(out)
        streams = Table(title="resumable streams", title_justify="left")
        for col in ("source (pipeline)", "stream", "durable messages"):
            streams.add_column(col)
        for s in info.streams:
            streams.add_row(s["source"], s["stream"], str(s["durable"]))
        console.print(streams if info.streams else "resumable streams: none")
