"""Kafka -> engine -> Kafka against a plain confluent-kafka loop doing the
same work in the same run.

The work is ``examples/celsius_kafka``: each record's value is a Celsius
temperature as text; the output is the Fahrenheit value as text, produced
to another topic.  A local test broker (``wallaroo.tools.kafka_broker``)
holds ``--records`` input records over 3 partitions, produced once; every
row reads all of them into a fresh output topic:

  plain loop          one consumer (all partitions assigned), decode,
                      compute, produce; timed from the first record
                      consumed to the producer's flush
  engine (off)        ``wallaroo run celsius_kafka.py``, no resilience
  engine (NORMAL)     with ``--resilience-dir``
  plain loop, transactional   the same loop with a transactional producer,
                      a transaction per 10,000 records (the consumed
                      offsets committed in it)
  engine (NORMAL, transactional sinks)   plus ``--kafka-transactional-sinks``

Engine rows are timed from the worker's ``ready`` line to the last output
in the topic (by watching its high watermarks; process start-up and imports
left out), the plain loop from making its consumer to the same point;
both produce with idempotence, ``acks=all`` and 5 ms linger to 3
partitions.  The worker's longest event-loop stall (from its stop line)
shows whether any Kafka call blocked the trio loop; the same rows are run
again at a paced rate (the producer writing while the worker reads) so
that batches are small and the stall is what is left.

    python benchmarks/bench_kafka.py --records 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from wallaroo.tools.kafka_broker import Broker  # noqa: E402
from _machine import machine_line  # noqa: E402

APP = os.path.join(ROOT, "examples", "celsius_kafka", "celsius_kafka.py")
OUT_PARTITIONS = 3
GROUP = "wallaroo.Celsius to Fahrenheit with Kafka.convert temperature readings"
LINGER_MS = 5  # the plain loop's linger.ms, the engine's max_produce_buffer_ms


def produce_input(boot: str, topic: str, n: int, rate: float | None = None) -> None:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": boot, "linger.ms": 5,
                  "enable.idempotence": True})
    t0 = time.perf_counter()
    for i in range(n):
        v = b"%.1f" % ((i % 2000) / 10 - 50)
        while True:
            try:
                p.produce(topic, v, partition=i % 3)
                break
            except BufferError:
                p.poll(0.05)
        if rate and i % 500 == 0:
            p.poll(0)
            ahead = i / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    p.flush(120)


def high_watermarks(consumer, topic: str, parts: int) -> int:
    from confluent_kafka import TopicPartition
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                              cached=False)[1] for p in range(parts))


def plain_loop(boot: str, src: str, out: str, n: int,
               transactional: bool = False) -> float:
    """The tightest straightforward consume/transform/produce loop; with
    ``transactional``, a transaction per 10,000 records (as the engine's
    transactional sink at most), committing the consumed offsets in it."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    t0 = time.perf_counter()
    c = Consumer({"bootstrap.servers": boot, "group.id": f"plain-{time.time_ns()}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(src, p, 0) for p in range(3)])
    conf = {"bootstrap.servers": boot, "linger.ms": LINGER_MS,
            "enable.idempotence": True, "acks": "all"}
    if transactional:
        conf["transactional.id"] = f"plain-{time.time_ns()}"
    p = Producer(conf)
    if transactional:
        p.init_transactions(30)
        p.begin_transaction()
    in_txn = 0
    seen = 0
    while seen < n:
        msgs = c.consume(1000, 0.1)
        if transactional and (in_txn >= 10000 or (not msgs and in_txn)):
            p.send_offsets_to_transaction(c.position(c.assignment()),
                                          c.consumer_group_metadata(), 30)
            p.commit_transaction(60)
            p.begin_transaction()
            in_txn = 0
        in_txn += len(msgs)
        for m in msgs:
            if m.error() is not None:
                continue
            f = float(m.value().decode("ascii")) * 1.8 + 32
            while True:
                try:
                    p.produce(out, b"%.2f" % f)
                    break
                except BufferError:
                    p.poll(0.05)
            seen += 1
        p.poll(0)
    if transactional:
        p.send_offsets_to_transaction(c.position(c.assignment()),
                                      c.consumer_group_metadata(), 30)
        p.commit_transaction(60)
    # timed like the engine rows: until the topic holds every output (this
    # broker acknowledges idempotent produce requests only after it saves,
    # about a second later; neither row waits for that)
    while high_watermarks(c, out, OUT_PARTITIONS) < n:
        p.poll(0.005)
    took = time.perf_counter() - t0
    p.flush(120)
    c.close()
    return n / took


def engine(boot: str, src: str, out: str, n: int, extra: list[str],
           workdir: str, feed_rate: float | None = None) -> dict:
    from confluent_kafka import Consumer, TopicPartition
    cmd = [sys.executable, "-m", "wallaroo.cli", "run", APP,
           "--kafka_source_topic", src, "--kafka_source_brokers", boot,
           "--kafka_sink_topic", out, "--kafka_sink_brokers", boot,
           "--kafka_sink_max_produce_buffer_ms", str(LINGER_MS), *extra]
    # without --resilience-dir a worker starts where its group's committed
    # offsets say (an earlier row's end): every row reads from the start
    group = Consumer({"bootstrap.servers": boot, "group.id": GROUP})
    group.commit(offsets=[TopicPartition(src, p, 0) for p in range(3)],
                 asynchronous=False)
    group.close()
    watcher = Consumer({"bootstrap.servers": boot, "group.id": "watch"})
    w = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=workdir)
    lines: list[str] = []
    ready = threading.Event()
    ready_at: list[float] = []

    def pump():
        for line in w.stderr:
            lines.append(line)
            if line.startswith("ready") and not ready.is_set():
                ready_at.append(time.perf_counter())
                ready.set()
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    if not ready.wait(60):
        w.kill()
        raise RuntimeError("the worker did not get ready:\n" + "".join(lines[-20:]))
    feeder = None
    if feed_rate:
        feeder = threading.Thread(target=produce_input, args=(boot, src, n, feed_rate),
                                  daemon=True)
        feeder.start()
    first, last = ready_at[0], None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        got = high_watermarks(watcher, out, OUT_PARTITIONS)
        now = time.perf_counter()
        if got >= n:
            last = now
            break
        time.sleep(0.01)
    w.terminate()
    w.wait(60)
    t.join(5)
    watcher.close()
    stop = next((line for line in lines if "stopped:" in line), "")
    m = re.search(r"longest event-loop stall ([\d.]+) ms", stop)
    if last is None:
        raise RuntimeError("the engine did not produce every output:\n"
                           + "".join(lines[-20:]))
    return {"msgs_per_s": n / (last - first) if last > first else float("nan"),
            "stall_ms": float(m.group(1)) if m else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--paced-rate", type=float, default=20000,
                    help="records per second of the paced rows (0: none)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    n = a.records
    print(f"Kafka benchmark: {n:,} records (celsius text in, Fahrenheit text out), "
          f"repeat {a.repeat}")
    print("command: python benchmarks/bench_kafka.py " + " ".join(sys.argv[1:]))
    print(machine_line())
    rows = {"plain loop": [], "engine (off)": [], "engine (NORMAL)": [],
            "plain loop, transactional": [],
            "engine (NORMAL, transactional sinks)": []}
    stalls: dict[str, list] = {k: [] for k in rows}  # engine rows only
    paced: dict[str, list] = {}
    extras = {"engine (off)": [], "engine (NORMAL)": ["--resilience-dir", "state"],
              "engine (NORMAL, transactional sinks)": [
                  "--resilience-dir", "state", "--kafka-transactional-sinks"]}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker()
        boot = broker.start(os.path.join(tmp, "broker"))
        try:
            broker.create_topic("in", partitions=3)
            produce_input(boot, "in", n)
            k = 0
            for r in range(a.repeat):
                for name in rows:
                    k += 1
                    out = f"out{k}"
                    broker.create_topic(out, partitions=OUT_PARTITIONS)
                    if name.startswith("plain loop"):
                        rate = plain_loop(boot, "in", out, n,
                                          transactional=name.endswith("transactional"))
                    else:
                        work = os.path.join(tmp, f"w{k}")
                        os.makedirs(work)
                        res = engine(boot, "in", out, n, extras[name], work)
                        rate = res["msgs_per_s"]
                        stalls[name].append(res["stall_ms"])
                    rows[name].append(rate)
                    print(f"  run {r + 1} {name:<38} {rate:>10,.0f} msgs/s"
                          + (f"   longest loop stall {stalls[name][-1]:.1f} ms"
                             if name in extras else ""), flush=True)
            if a.paced_rate:
                for name in extras:
                    k += 1
                    src, out = f"paced-in{k}", f"out{k}"
                    broker.create_topic(src, partitions=3)
                    broker.create_topic(out, partitions=OUT_PARTITIONS)
                    work = os.path.join(tmp, f"w{k}")
                    os.makedirs(work)
                    m = min(n, int(a.paced_rate * 10))
                    res = engine(boot, src, out, m, extras[name], work,
                                 feed_rate=a.paced_rate)
                    paced[name] = res["stall_ms"]
                    print(f"  paced {a.paced_rate:,.0f}/s {name:<30} longest loop "
                          f"stall {res['stall_ms']:.1f} ms", flush=True)
        finally:
            broker.stop()
    if not a.repeat:
        return 0
    med = {k: statistics.median(v) for k, v in rows.items()}
    print("medians:")
    for name, v in med.items():
        print(f"  {name:<38} {v:>10,.0f} msgs/s   {v / med['plain loop']:.2f}x plain loop")
    print(f"  engine (NORMAL) / engine (off): {med['engine (NORMAL)'] / med['engine (off)']:.2f}; "
          f"engine (NORMAL, transactional sinks) / plain loop, transactional: "
          f"{med['engine (NORMAL, transactional sinks)'] / med['plain loop, transactional']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"records": n, "runs": rows, "medians": med,
                       "stall_ms": stalls, "paced_stall_ms": paced}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
