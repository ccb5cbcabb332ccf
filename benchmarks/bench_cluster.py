"""Cluster benchmark: word count (dynamic keys, several words per line) and
alphabet_partitioned on 1 and 2 workers of one host (``wallaroo run
--workers N``), resilience off and NORMAL, fed by two sender connections
(``wallaroo send``, half of the input each); beside them Bytewax 0.21 doing
alphabet's work with 1 and 2 processes from a partitioned in-memory source.

    python benchmarks/bench_cluster.py --lines 100000 --votes 500000 --repeat 3

For every run: messages per second (the first output the receiver counts to
the last; process start-ups are left out) and the CPU seconds per message
summed over the workers
(user + system, read from /proc before they stop).  The sender and the
receiver share this machine's cores with the workers, so 2 workers cannot
double the throughput of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_line

REPO = Path(__file__).resolve().parent.parent
WORD_COUNT = REPO / "examples" / "word_count" / "word_count.py"
ALPHABET = REPO / "examples" / "alphabet_partitioned" / "alphabet_partitioned.py"
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def make_word_lines(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    vocab = ["".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=rnd.randint(3, 9)))
             for _ in range(5000)]
    return [" ".join(rnd.choices(vocab, k=6)).encode() for _ in range(n)]


def make_votes(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [struct.pack(">sI", bytes([97 + rnd.randrange(26)]), rnd.randrange(1, 100))
            for _ in range(n)]


def frames_file(path: Path, payloads: list[bytes]) -> None:
    with open(path, "wb") as f:
        for p in payloads:
            f.write(struct.pack(">I", len(p)) + p)


# A receiver that only counts, so it costs the shared cores next to nothing:
# newline-terminated records (word count) or fixed 13-byte ones (alphabet),
# over any number of connections; exits once it has them all.
COUNTER = r"""
import selectors, socket, sys, time
kind, want = sys.argv[1], int(sys.argv[2])
first = None
ls = socket.create_server(("127.0.0.1", 0))
print("listening 127.0.0.1:%d" % ls.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(ls, selectors.EVENT_READ)
got = nbytes = 0
while got < want:
    for key, _ in sel.select():
        s = key.fileobj
        if s is ls:
            c, _ = ls.accept()
            sel.register(c, selectors.EVENT_READ)
            continue
        data = s.recv(1 << 20)
        if first is None:
            first = time.perf_counter()
        if not data:
            sel.unregister(s)
            s.close()
            continue
        if kind == "lines":
            got += data.count(b"\n")
        else:
            nbytes += len(data)
            got = nbytes // 13
print("%.6f" % (time.perf_counter() - first), flush=True)
"""


def engine_run(app: Path, inputs: list[Path], outputs: int, framing: str,
               workers: int, resilient: bool, workdir: Path,
               profile_dir: Path | None = None) -> dict:
    py = [sys.executable, "-m", "wallaroo.cli"]
    d = Path(tempfile.mkdtemp(dir=workdir))
    recv = subprocess.Popen([sys.executable, "-c", COUNTER, framing, str(outputs)],
                            stdout=subprocess.PIPE, text=True)
    sink = recv.stdout.readline().split()[-1]
    cmd = py + ["run", str(app), "--in", "127.0.0.1:0", "--out", sink,
                "--workers", str(workers)]
    if resilient:
        cmd += ["--resilience-dir", str(d / "state")]
    if profile_dir is not None:
        cmd += ["--profile-dir", str(profile_dir)]
    sup = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    source = cluster_file = None
    for line in sup.stderr:
        if line.startswith("ready "):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
            source, cluster_file = fields["sources"], fields["cluster_file"]
            break
    if source is None:
        raise RuntimeError("the cluster did not start")
    drain = subprocess.Popen(["cat"], stdin=sup.stderr, stdout=subprocess.DEVNULL)
    pids = [w["pid"] for w in json.load(open(cluster_file))["workers"]]
    cpu0 = sum(cpu_seconds(p) for p in pids)
    senders = [subprocess.Popen(py + ["send", source, "--frames", str(p), "--quiet"],
                                stderr=subprocess.DEVNULL) for p in inputs]
    elapsed = float(recv.stdout.readline())  # first output to the last
    recv.wait(timeout=600)
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    for s in senders:
        s.wait(timeout=60)
    sup.send_signal(signal.SIGTERM)
    sup.wait(timeout=120)
    drain.wait(timeout=10)
    return {"seconds": elapsed, "cpu_seconds": cpu}


BYTEWAX_PROC = r'''
import struct, sys, time
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main
sys.path.insert(0, sys.argv[4])
import alphabet_partitioned as app

framed = open(sys.argv[1], "rb").read()
procs, me = int(sys.argv[2]), int(sys.argv[3])
addresses = sys.argv[5].split(",") if procs > 1 else []
n = len(framed) // 9
payloads = [framed[i * 9 + 4:i * 9 + 9] for i in range(n)]

class Part(StatefulSourcePartition):
    def __init__(self, items): self.items, self.pos = items, 0
    def next_batch(self):
        if self.pos >= len(self.items): raise StopIteration()
        b = self.items[self.pos:self.pos + 1000]; self.pos += 1000; return b
    def snapshot(self): return self.pos

class Source(FixedPartitionedSource):
    def list_parts(self): return [str(i) for i in range(procs)]
    def build_part(self, step_id, name, resume):
        i = int(name); return Part(payloads[i::procs])

class Count(StatelessSinkPartition):
    def __init__(self): self.n = 0
    def write_batch(self, items): self.n += len(items)
    def close(self): open(sys.argv[6] + f".{me}", "w").write(str(self.n))

class Sink(DynamicSink):
    def build(self, step_id, worker_index, worker_count): return Count()

def add(state, data):
    if state is None: state = app.TotalVotes()
    result, _ = app.add_votes.fn(data, state)
    return state, result

flow = Dataflow("alphabet")
s = op.input("in", flow, Source())
s = op.map("decode", s, app.decoder.fn)
s = op.key_on("partition", s, app.partition.fn)
s = op.stateful_map("add", s, add)
s = op.map("encode", s, lambda kv: app.encoder.fn(kv[1]))
op.output("out", s, Sink())
cluster_main(flow, addresses, me)
'''


def bytewax_run(votes_file: Path, procs: int, workdir: Path) -> dict:
    script = workdir / "bytewax_proc.py"
    script.write_text(BYTEWAX_PROC)
    ports = [_free_port() for _ in range(procs)]
    addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
    counts = workdir / "bytewax.count"
    t0 = time.perf_counter()
    ps = [subprocess.Popen([sys.executable, str(script), str(votes_file), str(procs),
                            str(i), str(ALPHABET.parent), addresses, str(counts)],
                           stderr=subprocess.PIPE, text=True) for i in range(procs)]
    cpu = 0.0
    for p in ps:
        _, status, usage = os.wait4(p.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
        p.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - t0
    n = sum(int(open(f"{counts}.{i}").read()) for i in range(procs))
    return {"seconds": elapsed, "cpu_seconds": cpu, "outputs": n}


def profiles(inputs, cases, work: Path) -> dict:
    """One more 2-worker NORMAL run of each application under cProfile
    (``wallaroo run --profile-dir``): where each worker's CPU time goes."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _profile import analyse_profile
    out = {}
    print("where the time goes: one more 2-worker NORMAL run each, under cProfile "
          "(percent of each worker's profiled CPU time; the commit thread is not "
          "profiled)")
    for name, app, _payloads, outputs, framing in cases:
        pdir = work / f"profile-{name}"
        engine_run(app, inputs[name], outputs, framing, 2, True, work, pdir)
        out[name] = {}
        for prof in sorted(pdir.glob("*.prof")):
            res = analyse_profile(str(prof), top=0)
            out[name][prof.stem] = res["by_category"]
            shares = ", ".join(f"{c['category'].split(' (')[0]} {c['percent']:.0f}%"
                               for c in res["by_category"]
                               if c["percent"] is not None and c["percent"] >= 1)
            print(f"  {name} {prof.stem}: {shares}")
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100000, help="word count lines")
    ap.add_argument("--votes", type=int, default=500000, help="alphabet messages")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-bytewax", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="then one more 2-worker NORMAL run of each application "
                         "under cProfile: where each worker's time goes")
    ap.add_argument("--json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wallaroo-bench-cluster-"))
    lines = make_word_lines(a.lines, 1)
    words = sum(len(x.split()) for x in lines)
    votes = make_votes(a.votes, 2)
    inputs = {}
    for name, payloads in (("word_count", lines), ("alphabet", votes)):
        half = len(payloads) // 2
        inputs[name] = [work / f"{name}-a.frames", work / f"{name}-b.frames"]
        frames_file(inputs[name][0], payloads[:half])
        frames_file(inputs[name][1], payloads[half:])
    all_votes = work / "votes.frames"
    frames_file(all_votes, votes)
    print(f"cluster benchmark: word count {a.lines} lines ({words} words), "
          f"alphabet {a.votes} votes, repeat {a.repeat}")
    print(f"command: python benchmarks/bench_cluster.py --lines {a.lines} --votes "
          f"{a.votes} --repeat {a.repeat}" + (" --no-bytewax" if a.no_bytewax else "")
          + (" --profile" if a.profile else ""))
    print(machine_line())
    results = {}
    cases = [("word_count", WORD_COUNT, lines, words, "lines"),
             ("alphabet", ALPHABET, votes, len(votes), "length")]
    for name, app, payloads, outputs, framing in cases:
        for resilient in (False, True):
            for workers in (1, 2):
                key = f"{name}/{'NORMAL' if resilient else 'off'}/{workers}"
                runs = []
                for _ in range(a.repeat):
                    runs.append(engine_run(app, inputs[name], outputs, framing,
                                           workers, resilient, work))
                secs = statistics.median(r["seconds"] for r in runs)
                cpu = statistics.median(r["cpu_seconds"] for r in runs)
                results[key] = {"msgs_per_s": len(payloads) / secs,
                                "cpu_us_per_msg": cpu / len(payloads) * 1e6,
                                "runs": runs}
                print(f"  {key:<22} {len(payloads) / secs:>10,.0f} msgs/s   "
                      f"{cpu / len(payloads) * 1e6:6.2f} CPU us/msg (workers)")
    if not a.no_bytewax:
        for procs in (1, 2):
            runs = [bytewax_run(all_votes, procs, work) for _ in range(a.repeat)]
            assert all(r["outputs"] == len(votes) for r in runs), runs
            secs = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu_seconds"] for r in runs)
            results[f"bytewax/{procs}"] = {"msgs_per_s": len(votes) / secs,
                                           "cpu_us_per_msg": cpu / len(votes) * 1e6,
                                           "runs": runs}
            print(f"  bytewax/{procs} processes  {len(votes) / secs:>10,.0f} msgs/s   "
                  f"{cpu / len(votes) * 1e6:6.2f} CPU us/msg")
    print("ratios, 2 workers over 1 (throughput; CPU per message):")
    for name in ("word_count", "alphabet"):
        for mode in ("off", "NORMAL"):
            one, two = results[f"{name}/{mode}/1"], results[f"{name}/{mode}/2"]
            print(f"  {name:<11} {mode:<6} throughput {two['msgs_per_s'] / one['msgs_per_s']:.2f}x"
                  f"   CPU per message {two['cpu_us_per_msg'] / one['cpu_us_per_msg']:.2f}x")
    if "bytewax/1" in results:
        print(f"  bytewax 2 processes over 1: throughput "
              f"{results['bytewax/2']['msgs_per_s'] / results['bytewax/1']['msgs_per_s']:.2f}x")
    if a.profile:
        results["profiles"] = profiles(inputs, cases, work)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
