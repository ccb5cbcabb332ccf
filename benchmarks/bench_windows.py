"""Windows benchmark: a keyed tumbling-window sum over 10,000 keys, on one
worker, against a plain-Python loop doing the same work and Bytewax 0.21's
``fold_window`` (``SystemClock``, ``TumblingWindower``), in the same run.

    python benchmarks/bench_windows.py --messages 500000 --repeat 5

Every row is in-process, over the same decoded-ready payloads, in batches
of ``--batch`` messages, with windows of ``--window-ms`` by processing
(ingest) time, so several windows close during a run and the rest at the
end of the input:
  plain loop               decode, key, add to the (key, window) sum; at
                           each batch, emit the windows the clock passed
  engine (resilience off)  ``WorkerCore.process`` per batch (the worker's
  engine (NORMAL)          engine without sockets), then an ingest clock
                           past every window and one tick; NORMAL commits
                           each batch to its SQLite log
  bytewax                  ``fold_window`` over a TestingSource, run_main
Each row's output is checked: per key, the windows' sums add up to the
key's total.  Median of ``--repeat`` runs, min and max shown.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = HERE / "window_app.py"
_FRAME = struct.Struct(">I")
_MSG = struct.Struct(">HI")


def make_input(n: int, keys: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    return [_MSG.pack(rnd.randrange(keys), rnd.randrange(1000)) for _ in range(n)]


def totals(payloads: list[bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in payloads:
        i, v = _MSG.unpack(p)
        k = f"k{i}"
        out[k] = out.get(k, 0) + v
    return out


def check(lines: list[bytes], want: dict[str, int]) -> str:
    got: dict[str, int] = {}
    for line in lines:
        k, s = line.decode().rstrip("\n").split(",")
        got[k] = got.get(k, 0) + int(s)
    return "ok" if got == want else "WRONG"


def load_app():
    sys.path.insert(0, str(HERE))
    import window_app
    return window_app


def plain_loop(payloads, batch: int, window_ns: int):
    app = load_app()
    decode, update, output = app.decode.fn, app.Sum().update, app.Sum().output
    sums: dict = {}
    out: list[bytes] = []
    t0 = time.perf_counter()
    for b in range(0, len(payloads), batch):
        now = time.time_ns()
        start = now - now % window_ns
        for p in payloads[b:b + batch]:
            key, v = msg = decode(p)
            k = (key, start)
            sums[k] = update(msg, sums.get(k, 0))
        for k in [k for k in sums if k[1] + window_ns <= now]:
            out.append(output(k[0], sums.pop(k)).encode())
    for k in list(sums):
        out.append(output(k[0], sums.pop(k)).encode())
    return time.perf_counter() - t0, out


def engine(payloads, batch: int, window_ms: int, durable: bool):
    from wallaroo.runtime.core import Chunk
    from wallaroo.runtime.loader import load_application
    from wallaroo.runtime.windowing import tick_chunk
    from wallaroo.testing import Driver
    spec = load_application(str(APP), [str(APP), "--in", "127.0.0.1:1", "--out",
                                       "127.0.0.1:2", f"WINDOW_MS={window_ms}"])
    workdir = tempfile.mkdtemp(prefix="bench-windows-") if durable else None
    d = Driver(spec, resilience_dir=workdir)
    d.start()
    core, store = d.core, d.store
    frames = [_FRAME.pack(len(p)) + p for p in payloads]
    out: list[bytes] = []

    def run(chunks):
        bt = core.process(chunks)
        store.commit(bt.record)
        for o in bt.outputs:
            out.append(o.data)
            core.note_delivered(o.sink, o.end_seq)
    t0 = time.perf_counter()
    for b in range(0, len(payloads), batch):
        run([Chunk(0, payloads[b:b + batch], b"".join(frames[b:b + batch]))])
    core.now_ns = lambda: time.time_ns() + 3600 * 10**9  # past every window
    run([tick_chunk(Chunk)])
    secs = time.perf_counter() - t0
    d.crash()
    return secs, b"".join(out).splitlines(keepends=True)


def bytewax(payloads, batch: int, window_ms: int):
    from datetime import datetime, timedelta, timezone

    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    app = load_app()
    decode = app.decode.fn
    out: list = []
    flow = Dataflow("window_sums")
    s = op.input("in", flow, TestingSource(payloads, batch))
    s = op.map("decode", s, decode)
    s = op.key_on("key", s, lambda m: m[0])
    s = op.map_value("value", s, lambda m: m[1])
    w = win.fold_window("sum", s, win.SystemClock(),
                        win.TumblingWindower(timedelta(milliseconds=window_ms),
                                             datetime(2020, 1, 1, tzinfo=timezone.utc)),
                        lambda: 0, lambda acc, v: acc + v, lambda a, b: a + b)
    s = op.map("encode", w.down, lambda kv: ("%s,%d\n" % (kv[0], kv[1][1])).encode())
    op.output("out", s, TestingSink(out))
    t0 = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--window-ms", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-bytewax", action="store_true")
    a = ap.parse_args(argv)
    payloads = make_input(a.messages, a.keys)
    want = totals(payloads)
    window_ns = a.window_ms * 10**6
    rows = {"plain loop": lambda: plain_loop(payloads, a.batch, window_ns),
            "engine (resilience off)": lambda: engine(payloads, a.batch,
                                                      a.window_ms, False),
            "engine (NORMAL)": lambda: engine(payloads, a.batch, a.window_ms, True)}
    if not a.no_bytewax:
        if importlib.util.find_spec("bytewax") is not None:
            rows["bytewax 0.21 fold_window"] = lambda: bytewax(payloads, a.batch,
                                                               a.window_ms)
        else:
            print("bytewax is not installed (pip install 'bytewax==0.21.1', the "
                  "`bench` extra): no bytewax row")
    print(f"{a.messages} messages over {a.keys} keys, tumbling windows of "
          f"{a.window_ms} ms, batches of {a.batch}, median of {a.repeat} runs "
          f"(rows interleaved)")
    rates: dict[str, list[float]] = {name: [] for name in rows}
    verdict: dict[str, str] = {}
    windows: dict[str, int] = {}
    for _ in range(a.repeat):
        for name, fn in rows.items():
            secs, out = fn()
            rates[name].append(a.messages / secs)
            v = check(out, want)
            verdict[name] = v if verdict.get(name, "ok") == "ok" else verdict[name]
            windows[name] = len(out)
    plain = statistics.median(rates["plain loop"])
    bw = statistics.median(rates["bytewax 0.21 fold_window"]) \
        if "bytewax 0.21 fold_window" in rates else None
    print(f"{'row':28} {'msgs/s (min-max)':>28} {'x plain':>8} {'x bytewax':>10} "
          f"{'windows':>8}  output")
    for name, rs in rates.items():
        m = statistics.median(rs)
        print(f"{name:28} {m:>12,.0f} ({min(rs):,.0f}-{max(rs):,.0f}) "
              f"{m / plain:>8.2f} {(m / bw) if bw else float('nan'):>10.2f} "
              f"{windows[name]:>8}  {verdict[name]}")
    return 0 if all(v == "ok" for v in verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
