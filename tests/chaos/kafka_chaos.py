"""Chaos over Kafka: ``examples/kafka_count`` (counting by key, resilience
on) reads a topic while a producer writes ``--records`` keyed records into
it, and is SIGKILLed at random moments (one worker, restarted by this
script with its original command line; or, with ``--workers 3``, any
worker of the cluster, restarted by the supervisor).  The output topic is
read with ``isolation.level=read_committed``.  Then:

- every key's last count equals the number of records with that key
  (nothing lost, nothing applied twice: the offsets are part of each
  commit);
- every count 1..N of every key was produced (no output missing);
- repeated outputs are counted and reported: the sink delivers at least
  once (an output produced but not yet confirmed when the worker died is
  produced again).

The broker is the test broker of ``tests/kafka_broker.py`` (started here,
stopped with SIGTERM at the end: never SIGKILLed).

    python -m tests.chaos.kafka_chaos --records 50000 --kills 3
    python -m tests.chaos.kafka_chaos --records 50000 --kills 5 --workers 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from .cluster_chaos import NAMES, kill_workers
from .run_chaos import ROOT, Proc, wallaroo

APP = os.path.join(ROOT, "examples", "kafka_count", "kafka_count.py")


@dataclass
class KafkaChaosResult:
    records: int
    workers: int
    kills: list[str] = field(default_factory=list)
    keys: int = 0
    outputs: int = 0
    duplicate_outputs: int = 0
    missing_outputs: int = 0
    wrong_finals: int = 0
    over_counts: int = 0
    restart_to_ready_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    worker_exit: int | None = None
    workdir: str = ""
    exactly_once: bool = False  # --kafka-transactional-sinks

    @property
    def ok(self) -> bool:
        return (self.missing_outputs == 0 and self.wrong_finals == 0
                and self.over_counts == 0 and len(self.kills) > 0
                and self.worker_exit == 0
                and (self.duplicate_outputs == 0 or not self.exactly_once))

    def summary(self) -> str:
        t = self.restart_to_ready_s
        return "\n".join([
            f"records {self.records} over {self.keys} keys, {self.workers} worker(s); "
            f"SIGKILLs {len(self.kills)} ({', '.join(self.kills)}), wall time "
            f"{self.seconds:.1f}s",
            f"keys with a wrong final count {self.wrong_finals}, counts above the "
            f"records of their key {self.over_counts}, outputs missing "
            f"{self.missing_outputs}",
            f"outputs read {self.outputs} (read_committed), repeated "
            f"{self.duplicate_outputs}" + (" (transactional sink: must be 0)"
                                           if self.exactly_once else
                                           " (at-least-once sink)"),
            (f"kill -> ready again: min {min(t):.2f}s median "
             f"{statistics.median(t):.2f}s max {max(t):.2f}s" if t else
             "kill -> ready again: -"),
            f"final worker exit {self.worker_exit}",
            f"verdict: {'PASS' if self.ok else 'FAIL'}  (logs in {self.workdir})"])


def read_outputs(bootstrap: str, topic: str, partitions: int,
                 quiet: float = 1.0) -> list[str]:
    """Every committed output so far, by a new read_committed consumer
    (from the start, until nothing arrives for ``quiet`` seconds).  A new
    consumer each time: on the test broker a long-lived read_committed
    consumer was seen to stop receiving after a killed producer's
    transaction was aborted, while a new one read everything."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap,
                  "group.id": f"chaos-check-{time.time_ns()}",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[str] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < quiet:
            for m in c.consume(5000, 0.1):
                if m.error() is None:
                    values.append(m.value().decode())
                    last = time.monotonic()
    finally:
        c.close()
    return values


def produce(bootstrap: str, topic: str, keys: list[str], rate: float,
            done: threading.Event) -> None:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "linger.ms": 5})
    t0 = time.perf_counter()
    for i, k in enumerate(keys):
        while True:
            try:
                p.produce(topic, k.encode(), k.encode())
                break
            except BufferError:
                p.poll(0.05)
        if i % 200 == 0:
            p.poll(0)
            ahead = i / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    p.flush(60)
    done.set()


def check(values: list[str], keys: list[str], res: KafkaChaosResult) -> None:
    expected = Counter(keys)
    seen: dict[str, Counter] = defaultdict(Counter)
    for v in values:
        k, _, n = v.rpartition(":")
        seen[k][int(n)] += 1
    res.keys = len(expected)
    res.outputs = len(values)
    res.duplicate_outputs = sum(c - 1 for s in seen.values() for c in s.values() if c > 1)
    for k, n in expected.items():
        got = seen.get(k, Counter())
        res.missing_outputs += sum(1 for i in range(1, n + 1) if i not in got)
        if max(got, default=0) != n:
            res.wrong_finals += 1
        res.over_counts += sum(1 for i in got if i > n)
    res.over_counts += sum(1 for k in seen if k not in expected)


def run(records: int = 50000, kills: int = 3, workers: int = 1, rate: float = 10000,
        keys: int = 500, seed: int | None = None, say=print,
        workdir: str | None = None, exactly_once: bool = False) -> KafkaChaosResult:
    from wallaroo.tools.kafka_broker import Broker
    seed = random.randrange(1 << 30) if seed is None else seed
    rnd = random.Random(seed)
    say(f"kafka chaos: seed {seed}; command: python -m tests.chaos.kafka_chaos "
        f"--records {records} --kills {kills} --workers {workers} --rate {rate:g} "
        f"--seed {seed}" + (" --exactly-once" if exactly_once else ""))
    workdir = workdir or tempfile.mkdtemp(prefix="wallaroo-kafka-chaos-")
    res = KafkaChaosResult(records=records, workers=workers, workdir=workdir,
                           exactly_once=exactly_once)
    broker = Broker()
    bootstrap = broker.start(os.path.join(workdir, "broker"))
    worker = None
    try:
        broker.create_topic("words", partitions=6)
        broker.create_topic("counts", partitions=3)
        stream = [f"k{rnd.randrange(keys)}" for _ in range(records)]
        state = os.path.join(workdir, "state")
        cmd = wallaroo("run", APP, "--resilience-dir", state,
                       *(["--workers", str(workers)] if workers > 1 else []),
                       *(["--kafka-transactional-sinks"] if exactly_once else []),
                       "--kafka_source_topic", "words", "--kafka_source_brokers",
                       bootstrap, "--kafka_sink_topic", "counts",
                       "--kafka_sink_brokers", bootstrap)
        log = os.path.join(workdir, "worker.log")
        t0 = time.perf_counter()
        worker = Proc(cmd, log)
        worker.wait_for(r"^ready", 60)
        done = threading.Event()
        feeder = threading.Thread(target=produce, args=(bootstrap, "words", stream,
                                                        rate, done), daemon=True)
        feeder.start()
        flow = records / rate
        # on a cluster every worker, the initializer included, is hit
        targets = NAMES[:] + [rnd.choice(NAMES) for _ in range(max(0, kills - 3))]
        rnd.shuffle(targets)
        for i in range(kills):
            time.sleep(rnd.uniform(0.5, 1.5) * flow / (kills + 1))
            if workers == 1:
                worker.kill()
                worker.p.wait()
                k0 = time.perf_counter()
                res.kills.append("worker")
                say(f"SIGKILL worker at {k0 - t0:.2f}s")
                worker = Proc(cmd, log)
                worker.wait_for(r"^ready", 60)
            else:
                k0 = time.perf_counter()
                killed = kill_workers(worker, state, [targets[i]])
                if not killed:
                    continue
                res.kills += killed
                say(f"SIGKILL {killed[0]} at {k0 - t0:.2f}s")
            res.restart_to_ready_s.append(time.perf_counter() - k0)
        done.wait(600)
        expected = Counter(stream)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            finals: dict[str, int] = {}
            for v in read_outputs(bootstrap, "counts", 3, quiet=0.5):
                k, _, n = v.rpartition(":")
                finals[k] = max(finals.get(k, 0), int(n))
            if all(finals.get(k) == n for k, n in expected.items()):
                break
            time.sleep(1.0)
        time.sleep(1.0)  # anything beyond (a repeat) arrives too
        res.worker_exit = worker.stop(timeout=60)
        check(read_outputs(bootstrap, "counts", 3), stream, res)
        res.seconds = time.perf_counter() - t0
        return res
    finally:
        if worker is not None:
            worker.kill()
        broker.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=50000)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rate", type=float, default=10000, help="records per second")
    ap.add_argument("--keys", type=int, default=500)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--exactly-once", action="store_true",
                    help="--kafka-transactional-sinks: no output may repeat")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = run(a.records, a.kills, a.workers, a.rate, a.keys, a.seed,
              exactly_once=a.exactly_once)
    print(res.summary())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(asdict(res), f, indent=1)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
