"""Kafka sources and sinks against a real Kafka-protocol broker (the
session's ``kafka_broker``): every API form end to end, SIGKILL with exact
counts, a cluster consuming its partitions, and the error cases with their
log lines."""

from __future__ import annotations

import struct
import time
from collections import Counter

from .conftest import REPO, WAIT, free_port
from wallaroo.tools.kafka_broker import produce_all, read_all

CELSIUS = str(REPO / "examples" / "celsius_kafka" / "celsius_kafka.py")
COUNT = str(REPO / "examples" / "kafka_count" / "kafka_count.py")
CUSTOM = str(REPO / "tests" / "apps" / "kafka_custom.py")


def kafka_args(bootstrap: str, source: str, sink: str, *extra: str) -> list[str]:
    return ["--kafka_source_topic", source, "--kafka_source_brokers", bootstrap,
            "--kafka_sink_topic", sink, "--kafka_sink_brokers", bootstrap, *extra]


def ready(proc) -> str:
    return proc.wait_line(lambda line: line.startswith("ready"), timeout=60)


def finals(records) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, v, _ in records:
        k, _, n = v.decode().rpartition(":")
        out[k] = max(out.get(k, 0), int(n))
    return out


def test_celsius_with_the_default_parsers(procs, kafka_broker, kafka_topic):
    """DefaultKafkaSourceCLIParser / DefaultKafkaSinkCLIParser, float32 and
    text values; a value the decoder cannot read costs that record only."""
    src, out = kafka_topic(2), kafka_topic(1)
    boot = kafka_broker.bootstrap
    values = [struct.pack(">f", 100.0), b"0", b"-40", b"not a number", b"37.5"]
    produce_all(boot, src, values, partition=0)
    w = procs("run", CELSIUS, *kafka_args(boot, src, out))
    line = ready(w)
    assert f"sources=kafka:{src}" in line and f"sinks=kafka:{out}" in line
    got = read_all(boot, out, 1, 4)
    assert [v for _, v, _ in got] == [b"212.00", b"32.00", b"-40.00", b"99.50"]
    assert all(k is None for k, _, _ in got)
    line = w.wait_line("not a number")  # the failed record is logged, naming it
    assert f"message 3 of kafka topic {src!r} partition 0" in line  # its offset
    assert w.terminate() == 0
    assert "1 failed messages" in w.stderr


def test_counts_survive_sigkill_exactly(procs, kafka_broker, kafka_topic, tmp_path):
    """kafka_parse_*_options + KafkaSourceConfig/KafkaSinkConfig, resilience:
    SIGKILL after part of the input, restart with the same command line: the
    final count of every key is exact, no count is missing."""
    src, out = kafka_topic(3), kafka_topic(2)
    boot = kafka_broker.bootstrap
    keys = [f"k{i % 37}".encode() for i in range(3000)]
    args = ["run", COUNT, "--resilience-dir", str(tmp_path / "state"),
            *kafka_args(boot, src, out)]
    produce_all(boot, src, keys[:2000], keys[:2000])
    w = procs(*args)
    ready(w)
    read_all(boot, out, 2, 1000, settle=0)  # well under way
    w.kill()
    produce_all(boot, src, keys[2000:], keys[2000:])
    w = procs(*args)
    ready(w)
    got = read_all(boot, out, 2, 3000, timeout=60, settle=1.0)
    expected = Counter(k.decode() for k in keys)
    assert finals(got) == dict(expected)
    seen = Counter(v.decode() for _, v, _ in got)
    for k, n in expected.items():
        assert all(seen[f"{k}:{i}"] for i in range(1, n + 1)), k
    # each output is produced with its key: one key, one partition
    parts = {}
    for key, v, p in got:
        assert key.decode() == v.decode().rpartition(":")[0]
        assert parts.setdefault(key, p) == p
    assert w.terminate() == 0
    # the broker's committed offsets are written too (for outside tools)
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": boot, "group.id":
                  "wallaroo.Counting by key over Kafka.count keys"})
    committed = c.committed([TopicPartition(src, p) for p in range(3)], timeout=10)
    c.close()
    assert sum(tp.offset for tp in committed) == 3000


def test_custom_parsers_and_an_explicit_partition(procs, kafka_broker, kafka_topic):
    src, out = kafka_topic(1), kafka_topic(2)
    boot = kafka_broker.bootstrap
    produce_all(boot, src, [b"a", b"bc", b"def"])
    w = procs("run", CUSTOM, *kafka_args(boot, src, out))
    ready(w)
    got = read_all(boot, out, 2, 3)
    assert sorted((k, v, p) for k, v, p in got) == [
        (b"k-A", b"A", 1), (b"k-BC", b"BC", 1), (b"k-DEF", b"DEF", 1)]
    assert w.terminate() == 0


def test_two_workers_share_the_partitions(procs, kafka_broker, kafka_topic, tmp_path):
    src, out = kafka_topic(4), kafka_topic(2)
    boot = kafka_broker.bootstrap
    keys = [f"w{i % 11}".encode() for i in range(2000)]
    produce_all(boot, src, keys, keys)
    sup = procs("run", COUNT, "--workers", "2", "--resilience-dir",
                str(tmp_path / "state"), *kafka_args(boot, src, out))
    ready(sup)
    got = read_all(boot, out, 2, 2000, timeout=60)
    assert finals(got) == dict(Counter(k.decode() for k in keys))
    assert sup.wait_line("initializer | ") and "consuming partitions 0,2 of 4" in sup.stderr
    assert "consuming partitions 1,3 of 4" in sup.stderr
    assert sup.terminate() == 0


def test_a_missing_topic_is_reported_and_waited_for(procs, kafka_broker, kafka_topic):
    """Neither a missing source topic nor a missing sink topic crashes the
    worker or loses anything: each is logged naming the topic and broker,
    retried with backoff, and used once it exists."""
    boot = kafka_broker.bootstrap
    src, out = f"late-in-{time.time_ns()}", f"late-out-{time.time_ns()}"
    w = procs("run", CELSIUS, *kafka_args(boot, src, out))
    ready(w)
    w.wait_line(lambda line: f"topic {src!r}" in line and "not available" in line
                and boot in line, timeout=30)
    kafka_broker.create_topic(src, partitions=1)
    produce_all(boot, src, [b"10", b"20"])
    w.wait_line(lambda line: f"kafka topic {out!r}" in line and boot in line
                and "UNKNOWN_TOPIC" in line and "nothing dropped" in line, timeout=60)
    kafka_broker.create_topic(out, partitions=1)
    got = read_all(boot, out, 1, 2, timeout=60)
    assert [v for _, v, _ in got] == [b"50.00", b"68.00"]
    assert w.terminate() == 0


def test_an_unreachable_broker_is_logged_and_nothing_is_lost(procs, kafka_broker,
                                                             kafka_topic, tmp_path):
    """Brokers nobody listens on: the source logs the transport error naming
    topic and brokers and keeps retrying; the worker stays up and stops
    cleanly."""
    dead = f"127.0.0.1:{free_port()}"
    w = procs("run", CELSIUS, *kafka_args(dead, "nowhere", "nowhere-out"))
    ready(w)
    w.wait_line(lambda line: "topic 'nowhere'" in line and dead in line, timeout=30)
    assert w.terminate() == 0


def test_an_output_over_max_message_size_costs_that_output_only(
        procs, kafka_broker, kafka_topic):
    src, out = kafka_topic(1), kafka_topic(1)
    boot = kafka_broker.bootstrap
    produce_all(boot, src, [b"1", b"100", b"2"])  # 33.80, 212.00 (6 bytes), 35.60
    w = procs("run", CELSIUS, *kafka_args(boot, src, out,
                                          "--kafka_sink_max_message_size", "5"))
    ready(w)
    got = read_all(boot, out, 1, 2)
    assert [v for _, v, _ in got] == [b"33.80", b"35.60"]
    w.wait_line("larger than", timeout=WAIT)
    assert "max_message_size of 5 bytes" in w.stderr
    assert w.terminate() == 0
    assert "1 failed messages" in w.stderr


def test_without_resilience_a_restart_continues_from_the_group_offsets(
        procs, kafka_broker, kafka_topic):
    """Without --resilience-dir nothing of the worker survives, so a restart
    starts where the offsets it committed to the broker say, not at the
    beginning of the topic."""
    src, out = kafka_topic(1), kafka_topic(1)
    boot = kafka_broker.bootstrap
    produce_all(boot, src, [b"0", b"100"])
    w = procs("run", CELSIUS, *kafka_args(boot, src, out))
    ready(w)
    assert len(read_all(boot, out, 1, 2)) == 2
    time.sleep(1.5)  # the offsets reach the broker about once a second
    assert w.terminate() == 0
    produce_all(boot, src, [b"-40"])
    w = procs("run", CELSIUS, *kafka_args(boot, src, out))
    ready(w)
    got = read_all(boot, out, 1, 3, settle=1.0)
    assert [v for _, v, _ in got] == [b"32.00", b"212.00", b"-40.00"]
    assert w.terminate() == 0


def test_kafka_options_reach_every_client(procs, kafka_broker, kafka_topic):
    """--kafka-option KEY=VALUE is applied to the worker's Kafka clients; a
    malformed one, or a setting librdkafka does not know, is refused before
    anything starts."""
    src, out = kafka_topic(1), kafka_topic(1)
    boot = kafka_broker.bootstrap
    bad = procs("run", CELSIUS, *kafka_args(boot, src, out), "--kafka-option", "nonsense")
    assert bad.wait() == 2
    assert "--kafka-option 'nonsense': expected KEY=VALUE" in bad.stderr
    # a setting librdkafka refuses is refused before the worker starts
    w = procs("run", CELSIUS, *kafka_args(boot, src, out),
              "--kafka-option", "no.such.setting=1")
    assert w.wait() == 2
    assert 'No such configuration property: "no.such.setting"' in w.stderr
    # and a valid one is used: the records flow with it
    produce_all(boot, src, [b"10"])
    w = procs("run", CELSIUS, *kafka_args(boot, src, out),
              "--kafka-option", "client.id=wallaroo-test")
    ready(w)
    assert [v for _, v, _ in read_all(boot, out, 1, 1)] == [b"50.00"]
    assert w.terminate() == 0
