"""``wallaroo run --metrics HOST:PORT``: the figures of a known run, read
back from /metrics with prometheus_client's own parser, match exactly;
after a SIGKILL and restart, replayed messages are counted apart."""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO, WAIT, start_receiver

CELSIUS = str(REPO / "examples" / "celsius" / "celsius.py")


def scrape(addr: str) -> dict:
    """{(metric sample name, frozen labels): value}"""
    body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=WAIT).read()
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    want = {k: v for k, v in labels.items()}
    got = [v for (n, ls), v in m.items() if n == name and want.items() <= dict(ls).items()]
    assert got, (name, labels, sorted({n for n, _ in m}))
    return sum(got)


def run_with_metrics(procs, *extra):
    rx, rx_port = start_receiver(procs, "--framing", "lines")
    w = procs("run", CELSIUS, "--in", "127.0.0.1:0", "--out", f"127.0.0.1:{rx_port}",
              "--metrics", "127.0.0.1:0", *extra)
    ready = w.wait_line(lambda line: line.startswith("ready"))
    src = re.search(r"sources=[^:]+:(\d+)", ready).group(1)
    addr = re.search(r"metrics=(\S+)", ready).group(1)
    return w, rx, int(src), addr


def send_lines(port: int, lines: list[bytes]) -> None:
    from .conftest import send_all_and_close
    send_all_and_close(port, b"".join(len(x).to_bytes(4, "big") + x for x in lines))


def wait_for(pred, timeout=WAIT):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_the_metrics_of_a_known_run_match_exactly(procs):
    w, rx, port, addr = run_with_metrics(procs)
    lines = [b"%d" % i for i in range(1000)]
    for i in (10, 500, 999):
        lines[i] = b"not a number"
    send_lines(port, lines)
    wait_for(lambda: value(scrape(addr), "wallaroo_sink_outputs_total") == 997)
    m = scrape(addr)
    assert value(m, "wallaroo_source_messages_total", kind="new",
                 pipeline="convert temperature readings") == 1000
    assert value(m, "wallaroo_source_messages_total", kind="replayed") == 0
    assert value(m, "wallaroo_sink_outputs_total", worker="initializer") == 997
    assert value(m, "wallaroo_sink_delivered_total") == 997
    assert value(m, "wallaroo_failures_total") == 3
    assert value(m, "wallaroo_failures_total", step="decoder decoder") == 3
    # the histograms have observations
    assert value(m, "wallaroo_batch_compute_seconds_count") >= 1
    assert value(m, "wallaroo_batch_messages_sum") == 1000
    # per step: the decoder's failures never reach the steps
    assert value(m, "wallaroo_step_messages_total", step="multiply by 1.8") == 997
    assert value(m, "wallaroo_step_messages_total", step="add 32") == 997
    # end to end: every output written is observed once
    assert value(m, "wallaroo_end_to_end_latency_seconds_count") == 997
    assert 0 < value(m, "wallaroo_end_to_end_latency_seconds_sum") < 997 * WAIT
    assert value(m, "wallaroo_restarts_total") == 0
    assert value(m, "wallaroo_replay_progress_ratio") == 1
    # where the messages' time went: every message that entered a batch
    for stage in ("queued", "compute", "handoff", "commit"):
        assert value(m, "wallaroo_message_stage_seconds_count", stage=stage) == 1000
    assert value(m, "wallaroo_uptime_seconds") > 0
    # / is the live page; anything else is a 404
    assert b"<html" in urllib.request.urlopen(f"http://{addr}/", timeout=WAIT).read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{addr}/nothing", timeout=WAIT)
    assert e.value.code == 404
    assert w.terminate() == 0


def test_replayed_messages_are_counted_apart_after_a_sigkill(procs, tmp_path):
    """A stateful application without a snapshot yet: the restart replays
    the logged inputs and counts them apart from new ones."""
    from .conftest import send_all_and_close, u64_frames
    state = str(tmp_path / "state")
    args = ("run", str(REPO / "tests" / "apps" / "slow_sum.py"), "--in", "127.0.0.1:0",
            "--out", "127.0.0.1:9", "--metrics", "127.0.0.1:0", "--resilience-dir",
            state, "--checkpoint-interval", "1000", "--delay-ms", "0",
            "--save-every", "0")
    w = procs(*args)
    ready = w.wait_line(lambda line: line.startswith("ready"))
    port = int(re.search(r"sources=[^:]+:(\d+)", ready).group(1))
    addr = re.search(r"metrics=(\S+)", ready).group(1)
    # the state never asks for a snapshot and no checkpoint comes for
    # 1000 s: the restart rebuilds it by replaying every logged input
    send_all_and_close(port, u64_frames(range(1, 501)))
    wait_for(lambda: value(scrape(addr), "wallaroo_commits_total") >= 1)
    commits = value(scrape(addr), "wallaroo_commits_total")
    send_all_and_close(port, u64_frames(range(501, 1001)))
    wait_for(lambda: value(scrape(addr), "wallaroo_source_messages_total", kind="new") == 1000)
    wait_for(lambda: value(scrape(addr), "wallaroo_commits_total") > commits)
    w.kill()
    w2 = procs(*args)
    ready = w2.wait_line(lambda line: line.startswith("ready"))
    m = scrape(re.search(r"metrics=(\S+)", ready).group(1))
    assert value(m, "wallaroo_source_messages_total", kind="replayed") == 1000, w2.stderr
    assert value(m, "wallaroo_source_messages_total", kind="new") == 0
    assert value(m, "wallaroo_step_messages_total", step="add") == 0  # replay apart
    assert value(m, "wallaroo_restarts_total") == 1  # kept in the database
    assert w2.terminate() == 0


def test_a_3_worker_clusters_metrics_match_exactly(procs, tmp_path):
    """The supervisor serves the whole cluster at its --metrics address:
    every worker's series, labelled worker=; each worker's own address is
    in cluster.json.  A known run's figures add up exactly."""
    import json
    import socket
    rx, rx_port = start_receiver(procs, "--framing", "lines")
    state = tmp_path / "state"
    sup = procs("run", CELSIUS, "--in", "127.0.0.1:0", "--out", f"127.0.0.1:{rx_port}",
                "--workers", "3", "--resilience-dir", state, "--metrics", "127.0.0.1:0")
    ready = sup.wait_line(lambda line: line.startswith("ready workers=3"))
    src = int(re.search(r"sources=[^:]+:(\d+)", ready).group(1))
    addr = re.search(r"metrics=(\S+)", ready).group(1)
    cluster = json.loads((state / "cluster.json").read_text())
    assert cluster["metrics"] == addr
    names = [w["name"] for w in cluster["workers"]]
    assert names == ["initializer", "worker-1", "worker-2"]
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", w["metrics"]) for w in cluster["workers"])
    # three connections open together: the supervisor hands one to each worker
    conns = [socket.create_connection(("127.0.0.1", src)) for _ in range(3)]
    wait_for(lambda: all(value(scrape(w["metrics"]), "wallaroo_uptime_seconds") > 0
                         for w in cluster["workers"]))
    for part, c in enumerate(conns):
        lines = [b"%d" % i for i in range(part * 1000, part * 1000 + 1000)]
        if part == 1:
            lines[7] = b"not a number"
        c.sendall(b"".join(len(x).to_bytes(4, "big") + x for x in lines))
        c.close()
    wait_for(lambda: value(scrape(addr), "wallaroo_sink_outputs_total") == 2999)
    m = scrape(addr)
    assert value(m, "wallaroo_source_messages_total", kind="new",
                 pipeline="convert temperature readings") == 3000
    assert value(m, "wallaroo_failures_total") == 1
    assert value(m, "wallaroo_end_to_end_latency_seconds_count") == 2999
    for name in names:
        assert value(m, "wallaroo_worker_up", worker=name) == 1
        assert value(m, "wallaroo_uptime_seconds", worker=name) > 0
        assert value(m, "wallaroo_source_messages_total", worker=name, kind="new") > 0
        # a worker's own address serves its series only
        own = scrape(next(w["metrics"] for w in cluster["workers"] if w["name"] == name))
        assert {dict(ls).get("worker") for (_, ls) in own} - {None} == {name}
    assert sup.terminate() == 0


def test_a_partitioned_clusters_counts_add_up_across_workers(procs, tmp_path):
    """alphabet_partitioned on 3 workers: every vote is taken from a source
    once, applied by the state step once (on the worker owning its letter,
    after a channel hop for most), and its output delivered once."""
    import socket
    import struct
    app = REPO / "examples" / "alphabet_partitioned" / "alphabet_partitioned.py"
    rx, rx_port = start_receiver(procs, "--framing", "length")
    sup = procs("run", app, "--in", "127.0.0.1:0", "--out", f"127.0.0.1:{rx_port}",
                "--workers", "3", "--resilience-dir", tmp_path / "state",
                "--metrics", "127.0.0.1:0")
    ready = sup.wait_line(lambda line: line.startswith("ready workers=3"))
    src = int(re.search(r"sources=[^:]+:(\d+)", ready).group(1))
    addr = re.search(r"metrics=(\S+)", ready).group(1)
    conns = [socket.create_connection(("127.0.0.1", src)) for _ in range(3)]
    n = 0
    for i, c in enumerate(conns):
        votes = [(chr(97 + (i * 7 + j) % 26), 1) for j in range(500)]
        c.sendall(b"".join(struct.pack(">IsI", 5, v.encode(), k) for v, k in votes))
        c.close()
        n += len(votes)
    wait_for(lambda: value(scrape(addr), "wallaroo_sink_delivered_total") == n)
    m = scrape(addr)
    assert value(m, "wallaroo_source_messages_total", kind="new") == n
    assert value(m, "wallaroo_step_messages_total", step="add votes") == n
    assert value(m, "wallaroo_sink_outputs_total") == n
    routed = value(m, "wallaroo_channel_messages_total", kind="new")
    assert 0 < routed < n
    assert value(m, "wallaroo_end_to_end_latency_seconds_count") == n
    assert sup.terminate() == 0


def test_the_supervisor_counts_a_killed_workers_restart(procs, tmp_path):
    import json
    import os
    import signal
    state = tmp_path / "state"
    sup = procs("run", CELSIUS, "--in", "127.0.0.1:0", "--out", "127.0.0.1:9",
                "--workers", "2", "--resilience-dir", state, "--metrics", "127.0.0.1:0",
                "--restart-delay", "0.1")
    ready = sup.wait_line(lambda line: line.startswith("ready workers=2"))
    addr = re.search(r"metrics=(\S+)", ready).group(1)
    pid = next(w["pid"] for w in json.loads((state / "cluster.json").read_text())
               ["workers"] if w["name"] == "worker-1")
    os.kill(pid, signal.SIGKILL)
    sup.wait_line(lambda line: "worker worker-1 ready again" in line)
    wait_for(lambda: value(scrape(addr), "wallaroo_worker_up", worker="worker-1") == 1)
    m = scrape(addr)
    assert value(m, "wallaroo_restarts_total", worker="worker-1") == 1  # its database
    assert value(m, "wallaroo_restarts_total", worker="initializer") == 0
    assert value(m, "wallaroo_supervisor_restarts_total", worker="worker-1") == 1
    assert sup.terminate() == 0


def test_latency_observes_each_output_once_and_bounds_its_marks(monkeypatch):
    from wallaroo.runtime import metrics
    monkeypatch.setattr(metrics, "MAX_MARKS", 3)
    lat = metrics.Latency(1)
    for i in range(10):  # a sink that is away: 10 batches of 5 outputs
        lat.add(0, i * 5, i * 5 + 5, 100.0 + i)
    assert len(lat.marks[0]) == 3
    lat.delivered(0, 12, now=110.0)  # part of a mark
    assert sum(lat.hist.counts) == 12
    lat.delivered(0, 50, now=110.0)
    assert sum(lat.hist.counts) == 50 and not lat.marks[0]
    assert lat.hist.sum == 10 * 5 + 9 * 5 + 40 * 8  # the merged ones: earliest time
    lat.delivered(1, 99, now=111.0)  # a channel to another worker: not a sink
    assert sum(lat.hist.counts) == 50


def test_messages_per_step_in_process():
    """What each step took: the first step's count comes from the source
    loop (decoded messages, nothing added per message), the others from
    the steps; a filter and a fan-out change what the next step takes."""
    import wallaroo
    from tests.apps.api_helpers import one_step_app, run

    @wallaroo.computation_multi("twice unless x")
    def twice(data):
        return None if data.startswith("x") else [data, data + "'"]

    @wallaroo.computation("upper")
    def upper(data):
        return data.upper()

    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def strict(bs):
        if bs == b"bad":
            raise ValueError("bad")
        return bs.decode()

    spec = one_step_app(lambda ab: ab.to(twice).to(upper), decoder=strict)
    d, batch = run(spec, ["a", "bad", "x1", "b", "x2"])
    counts = {step: seen[0] for _, step, seen in d.core.step_counts}
    assert counts == {"twice unless x": 4, "upper": 4}

    class Seen(object):
        def __init__(self):
            self.n = 0

    @wallaroo.state_computation("count")
    def count(data, state):
        state.n += 1
        return (state.n, False)

    spec = one_step_app(lambda ab: ab.to_stateful(count, Seen, "seen").to(upper),
                        decoder=strict)
    d, batch = run(spec, ["a", "bad", "b", "c"])
    counts = {step: seen[0] for _, step, seen in d.core.step_counts}
    assert counts == {"count": 3, "upper": 3}
