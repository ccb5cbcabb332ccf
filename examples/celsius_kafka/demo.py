"""Celsius to Fahrenheit over Kafka, end to end on this machine: starts a
local Kafka-protocol test broker (the ``noida-db`` wheel's: ``pip install
noida-db``), makes the topics ``celsius`` and ``fahrenheit``, produces the
temperatures of ``examples/celsius/temperatures.txt``, runs
``celsius_kafka.py`` with ``wallaroo run`` and the
``--kafka_source_*``/``--kafka_sink_*`` flags, reads every output back and
stops everything.

    python examples/celsius_kafka/demo.py
"""

import os
import subprocess
import sys
import tempfile
import time

from wallaroo.tools.kafka_broker import Broker, produce_all, read_all

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "celsius_kafka.py")
TEMPERATURES = os.path.join(HERE, "..", "celsius", "temperatures.txt")


def main() -> int:
    with open(TEMPERATURES, "rb") as f:
        values = [line.strip() for line in f if line.strip()]
    expected = [v for v in values if _number(v)]
    broker = Broker()
    with tempfile.TemporaryDirectory() as tmp:
        boot = broker.start(os.path.join(tmp, "broker"))
        try:
            return _run(broker, boot, values, expected)
        finally:
            broker.stop()


def _number(v: bytes) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _run(broker, boot, values, expected) -> int:
    broker.create_topic("celsius", partitions=2)
    broker.create_topic("fahrenheit", partitions=1)
    print(f"broker    {boot}, topics celsius (2 partitions), fahrenheit")
    produce_all(boot, "celsius", values, partition=0)
    print(f"producer  {len(values)} temperatures into celsius")
    worker = subprocess.Popen(
        [sys.executable, "-m", "wallaroo.cli", "run", APP,
         "--kafka_source_topic", "celsius", "--kafka_source_brokers", boot,
         "--kafka_sink_topic", "fahrenheit", "--kafka_sink_brokers", boot],
        stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    out = read_all(boot, "fahrenheit", 1, len(expected), timeout=60)
    took = time.perf_counter() - t0
    worker.terminate()
    _, err = worker.communicate(timeout=30)
    ready = next((line for line in err.splitlines() if line.startswith("ready")), "")
    print(f"worker    {ready}")
    failed = [line for line in err.splitlines() if "failed" in line
              and "decoder" in line]
    print(f"consumer  {len(out)} outputs from fahrenheit in {took:.2f}s "
          f"({len(values) - len(expected)} input(s) not a number: "
          f"{len(failed)} decoder failure(s) logged)")
    for c, (_, f, _) in list(zip(expected, out))[:8]:
        print(f"    {c.decode():>8} C -> {f.decode():>8} F")
    if len(out) > 8:
        print(f"    ... {len(out) - 8} more")
    print(f"worker    exit status {worker.returncode}")
    ok = [f for _, f, _ in out] == [b"%.2f" % (float(c) * 1.8 + 32)
                                    for c in expected]
    print("every output matches" if ok else "OUTPUTS DO NOT MATCH")
    return 0 if ok and worker.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
