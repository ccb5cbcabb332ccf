"""Reading the worker's cProfile output: the top functions by tottime, and
where the time goes by owner (application, engine, trio, I/O, start-up)."""

from __future__ import annotations

import io
import os
import pstats

IDLE = "idle: blocked in epoll waiting for input (not CPU)"
STARTUP = "interpreter start-up and imports"
APP = "application functions (decoder, partition, state, encoder)"
CLOSURES = "engine per-message closures (dataflow.py)"
ENGINE = "engine other (framing, inbox, batch/commit, sinks)"
TRIO = "trio scheduler and socket wrappers"
SOCKETS = "socket system calls"
SQLITE = "sqlite calls"
STORE = "store records and snapshots (wallaroo/recovery)"
CHANNELS = "channels between workers (peer batches, senders, data port)"
SERIAL = "serialization (pickle of peer batches and snapshots)"
LOGGING = "logging"
OTHER = "other Python (stdlib, click)"
# the applications whose functions count as the application's
APP_FILES = ("alphabet_partitioned.py", "word_count.py")
SOCKET_METHODS = ("recv", "recv_into", "send", "sendall", "accept", "connect",
                  "shutdown", "setsockopt", "getpeername")


def _base(fn: tuple) -> str | None:
    """The owner of a Python function by its file; None for builtins."""
    filename, _, func = fn
    if filename == "~":
        return None
    f = filename.replace(os.sep, "/")
    if f.startswith("<frozen") or func == "<module>":
        return STARTUP
    if f.endswith(APP_FILES):
        return APP
    if f.endswith("wallaroo/runtime/dataflow.py"):
        return CLOSURES
    if f.endswith(("wallaroo/runtime/channels.py", "wallaroo/connectors/channel.py",
                   "wallaroo/runtime/cluster_side.py")):
        return CHANNELS
    if "/wallaroo/recovery/" in f:
        return STORE
    if "/wallaroo/" in f:
        return ENGINE
    if "/logging/" in f:
        return LOGGING
    if "cloudpickle" in f:
        return SERIAL
    if "/trio/" in f or "/outcome/" in f or "/sniffio/" in f:
        return TRIO
    return OTHER


def _builtin_kind(func: str) -> str | None:
    if "select.epoll" in func:
        return IDLE
    if "socket" in func and any(f"'{m}'" in func for m in SOCKET_METHODS):
        return SOCKETS
    if "sqlite3" in func:
        return SQLITE
    if "pickle" in func:
        return SERIAL
    return None


def analyse_profile(path: str, top: int = 25) -> dict:
    """Top ``top`` functions by tottime, and tottime grouped by owner.

    - A function that is only ever called from start-up code (imports,
      module bodies, or functions themselves start-up only) is start-up.
    - A builtin's time is charged to the owner of the Python function that
      called it (``struct.unpack`` in the decoder is application time),
      except socket and sqlite calls, and ``epoll.poll``: the worker waiting
      for input, listed but kept out of the CPU percentages.
    """
    buf = io.StringIO()
    st = pstats.Stats(path, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    stats = st.stats
    base = {fn: _base(fn) for fn in stats}
    startup = {fn for fn, c in base.items() if c == STARTUP}
    changed = True
    while changed:
        changed = False
        for fn, (_cc, _nc, _tt, _ct, callers) in stats.items():
            if fn in startup or base[fn] not in (None, OTHER):
                continue
            if callers and all(c in startup for c in callers):
                startup.add(fn)
                changed = True

    def owner(fn):
        return STARTUP if fn in startup else base.get(fn)

    cats: dict[str, float] = {}
    total = 0.0
    for fn, (_cc, _nc, tt, _ct, callers) in stats.items():
        total += tt
        cat = owner(fn)
        if cat is None:
            cat = _builtin_kind(fn[2])
        if cat is None:
            spread = sum(c[2] for c in callers.values())
            if spread > 0:
                for caller, c in callers.items():
                    cc = owner(caller) or "builtins called by builtins"
                    cats[cc] = cats.get(cc, 0.0) + tt * c[2] / spread
                continue
            cat = "builtins (caller unknown)"
        cats[cat] = cats.get(cat, 0.0) + tt
    idle = cats.get(IDLE, 0.0)
    cpu = total - idle
    rows = sorted(cats.items(), key=lambda kv: (kv[0] == IDLE, -kv[1]))
    return {"top": buf.getvalue(), "total_tottime": total, "cpu_seconds": cpu,
            "by_category": [{"category": k, "seconds": v,
                             "percent": (100 * v / cpu if cpu and k != IDLE
                                         else None)}
                            for k, v in rows if v >= 0.0005]}


def profile_note(prof: dict) -> str:
    """One paragraph: where the worker's CPU time goes."""
    cats = {c["category"]: (c["percent"] or 0.0) for c in prof["by_category"]}
    part = lambda k: cats.get(k, 0.0)  # noqa: E731
    return (f"In short, of the worker's CPU time (idle waits excluded): "
            f"{part(APP):.0f}% is the application's own functions (what the "
            f"plain loop does, bar its frame parsing), {part(CLOSURES):.0f}% the "
            f"engine's per-message step closures around them, {part(ENGINE):.0f}% "
            f"the rest of the engine (frame splitting, inbox, batches, "
            f"sinks), {part(STORE):.0f}% commit records and snapshots, "
            f"{part(SERIAL):.0f}% pickling, {part(SOCKETS):.0f}% socket system "
            f"calls, {part(SQLITE):.0f}% sqlite, {part(TRIO):.0f}% trio, "
            f"{part(LOGGING):.0f}% logging, {part(OTHER):.0f}% other Python and "
            f"{part(STARTUP):.0f}% start-up.  "
            f"The plain loop pays only for the first part (plus its own frame "
            f"parsing); the engine pays for all of them, on cores it shares with "
            f"the sender and the receiver.  cProfile's per-call overhead "
            f"inflates the many small per-message calls.")
