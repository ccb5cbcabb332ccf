"""The in-process rows: the plain loop (the reference), the logged loop (a
hand-written durable loop on SQLite) and Bytewax.  Each runs the example
application's own functions (the decorated objects' ``.fn``) over the same
pre-framed input and returns its output for validation."""

from __future__ import annotations

import os
import pickle
import sqlite3
import struct
import sys
import time
from pathlib import Path

from _workload import payloads

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "examples" / "alphabet_partitioned"
APP_FILE = APP_DIR / "alphabet_partitioned.py"


def load_app():
    """The example module, imported under its stable name (as the worker
    does), so its state class pickles by reference."""
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    import alphabet_partitioned
    return alphabet_partitioned


# -- in-process rows --------------------------------------------------------

def engine_in_process(framed: bytes) -> tuple[float, bytes]:
    """The engine's own code without sockets or other processes: the
    worker's framer splits the input and ``WorkerCore.process`` runs it as
    one batch (resilience off), as the worker would.  Returns (seconds,
    output).  What separates this row from "engine (resilience off)" is
    the I/O: sockets, the inbox, the sender and receiver processes sharing
    the cores."""
    from wallaroo.runtime.core import Chunk
    from wallaroo.runtime.loader import load_application
    from wallaroo.testing import Driver
    spec = load_application(str(APP_FILE), [str(APP_FILE), "--in", "127.0.0.1:1",
                                            "--out", "127.0.0.1:2"])
    d = Driver(spec)
    d.start()
    core = d.core
    t0 = time.perf_counter()
    payloads, _ = core.framers[0].split(framed)
    batch = core.process([Chunk(0, payloads, framed)])
    secs = time.perf_counter() - t0
    return secs, b"".join(o.data for o in batch.outputs)


def plain_loop(framed: bytes, app) -> tuple[float, bytes]:
    """Parse frames, decode, partition, update the letter's TotalVotes,
    encode; join the outputs.  Returns (seconds, output)."""
    decode = app.decoder.fn
    partition = app.partition.fn
    compute = app.add_votes.fn
    encode = app.encoder.fn
    TotalVotes = app.TotalVotes
    t0 = time.perf_counter()
    unpack_from = struct.Struct(">I").unpack_from
    states: dict = {}
    out: list[bytes] = []
    append = out.append
    pos, n = 0, len(framed)
    while pos < n:
        (ln,) = unpack_from(framed, pos)
        start = pos + 4
        pos = start + ln
        data = decode(framed[start:pos])
        key = partition(data)
        st = states.get(key)
        if st is None:
            st = states[key] = TotalVotes()
        result, _save = compute(data, st)
        append(encode(result))
    output = b"".join(out)
    return time.perf_counter() - t0, output


def logged_loop(framed: bytes, app, db_path: str, batch: int = 1000,
                row_per_message: bool = False) -> tuple[float, bytes, int]:
    """The plain loop, plus per ``batch`` messages one SQLite transaction
    (WAL, synchronous=NORMAL) holding the batch's input frames (one row),
    its encoded outputs (one row) and a pickled snapshot of every state the
    batch touched (INSERT OR REPLACE, one row per dirty key).  With
    ``row_per_message`` the inputs and outputs are a row per message instead
    (the straightforward hand-written log).  Returns (seconds, output,
    database bytes)."""
    decode = app.decoder.fn
    partition = app.partition.fn
    compute = app.add_votes.fn
    encode = app.encoder.fn
    TotalVotes = app.TotalVotes
    dumps = pickle.dumps
    t0 = time.perf_counter()
    con = sqlite3.connect(db_path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE inputs (id INTEGER PRIMARY KEY, count INTEGER, "
                "frames BLOB)")
    con.execute("CREATE TABLE outputs (id INTEGER PRIMARY KEY, count INTEGER, "
                "data BLOB)")
    con.execute("CREATE TABLE snapshots (key TEXT PRIMARY KEY, state BLOB)")
    execute = con.execute
    unpack_from = struct.Struct(">I").unpack_from
    states: dict = {}
    all_out: list[bytes] = []
    pos, n = 0, len(framed)
    while pos < n:
        batch_start = pos
        out: list[bytes] = []
        append = out.append
        dirty = set()
        mark = dirty.add
        count = 0
        while pos < n and count < batch:
            (ln,) = unpack_from(framed, pos)
            start = pos + 4
            pos = start + ln
            data = decode(framed[start:pos])
            key = partition(data)
            st = states.get(key)
            if st is None:
                st = states[key] = TotalVotes()
            result, _save = compute(data, st)
            mark(key)
            append(encode(result))
            count += 1
        outputs = b"".join(out)
        execute("BEGIN")
        if row_per_message:
            frames, p = [], batch_start
            while p < pos:
                (ln,) = unpack_from(framed, p)
                frames.append((1, framed[p:p + 4 + ln]))
                p += 4 + ln
            con.executemany("INSERT INTO inputs (count, frames) VALUES (?, ?)",
                            frames)
            con.executemany("INSERT INTO outputs (count, data) VALUES (?, ?)",
                            [(1, o) for o in out])
        else:
            execute("INSERT INTO inputs (count, frames) VALUES (?, ?)",
                    (count, framed[batch_start:pos]))
            execute("INSERT INTO outputs (count, data) VALUES (?, ?)",
                    (count, outputs))
        con.executemany("INSERT OR REPLACE INTO snapshots (key, state) VALUES (?, ?)",
                        [(k, dumps(states[k])) for k in dirty])
        execute("COMMIT")
        all_out.append(outputs)
    con.close()
    elapsed = time.perf_counter() - t0
    size = sum(os.path.getsize(p) for p in Path(db_path).parent.glob(
        Path(db_path).name + "*"))
    return elapsed, b"".join(all_out), size


def frame_chunks(framed: bytes, size: int = 65536) -> list[bytes]:
    """``framed`` cut into pieces of about ``size`` bytes at frame ends, as
    a reader of the stream would get them (no frame straddles two)."""
    unpack_from = struct.Struct(">I").unpack_from
    chunks, start, pos, n = [], 0, 0, len(framed)
    while pos < n:
        (ln,) = unpack_from(framed, pos)
        pos += 4 + ln
        if pos - start >= size or pos >= n:
            chunks.append(framed[start:pos])
            start = pos
    return chunks


def split_frames(chunk: bytes) -> list[bytes]:
    """The payloads of the whole frames in ``chunk`` (the plain loop's
    framing, as a function for Bytewax's flat_map)."""
    unpack_from = struct.Struct(">I").unpack_from
    out: list[bytes] = []
    append = out.append
    pos, n = 0, len(chunk)
    while pos < n:
        (ln,) = unpack_from(chunk, pos)
        start = pos + 4
        pos = start + ln
        append(chunk[start:pos])
    return out


def bytewax_run(framed: bytes, app, batch_size: int,
                from_frames: bool = False) -> tuple[float, bytes]:
    """Bytewax 0.21: TestingSource over the payloads (frames already split),
    decode, key on the partition function, stateful_map with TotalVotes and
    the state computation, encode, TestingSink; run_main in this process.
    ``from_frames``: the source gives the framed input in 64 KiB pieces
    instead, and a ``flat_map`` splits them (the framing the plain loop and
    the engine do too)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    decode = app.decoder.fn
    partition = app.partition.fn
    compute = app.add_votes.fn
    encode = app.encoder.fn
    TotalVotes = app.TotalVotes

    def add(state, data):
        if state is None:
            state = TotalVotes()
        result, _save = compute(data, state)
        return state, result

    out: list[bytes] = []
    flow = Dataflow("alphabet")
    if from_frames:
        s = op.input("in", flow, TestingSource(frame_chunks(framed), 1))
        s = op.flat_map("split", s, split_frames)
    else:
        s = op.input("in", flow, TestingSource(payloads(framed), batch_size))
    s = op.map("decode", s, decode)
    s = op.key_on("partition", s, partition)
    s = op.stateful_map("add_votes", s, add)
    s = op.map("encode", s, lambda kv: encode(kv[1]))
    op.output("out", s, TestingSink(out))
    t0 = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - t0, b"".join(out)
