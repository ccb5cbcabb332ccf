"""A worker's metrics in Prometheus' text format at ``--metrics HOST:PORT``
(path ``/metrics``).

The hot path only adds to plain integers and lists (``CoreStats``, the
``Histogram`` below); a custom ``prometheus_client`` collector reads them
when a scrape comes, so counting costs nothing between scrapes.  Names and
units follow Prometheus' conventions: ``wallaroo_..._total`` counters,
``_seconds`` and ``_bytes``.  Every series carries the ``worker`` label.

A small HTTP/1.0 server on the trio loop answers ``GET /metrics`` and
``GET /`` (the live page of ``web_page``); anything else gets 404.
"""

from __future__ import annotations

import bisect
import collections
import time

import trio

# seconds: from 100 µs to 10 s
SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000)
MAX_REQUEST = 8192
# latency marks kept per sink while outputs wait; beyond, new ones merge
# into the newest (every output is still observed once, timed from the
# earlier arrival)
MAX_MARKS = 10000
REQUEST_TIMEOUT = 5.0


class Histogram:
    """Counts per bucket (plain integers) and the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds=SECONDS_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v

    def observe_n(self, v: float, n: int) -> None:
        """``n`` observations of ``v``."""
        self.counts[bisect.bisect_left(self.bounds, v)] += n
        self.sum += v * n

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip(self.bounds, self.counts):
            total += n
            out.append((repr(float(bound)), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


def quantile(now: list, before: list | None, q: float) -> float | None:
    """The ``q`` quantile of the observations between two readings of a
    histogram's cumulative buckets (``[(upper bound, count), ...]``, the
    last bound ``+Inf``), interpolated within its bucket as Prometheus'
    ``histogram_quantile`` does; None without observations."""
    prev = dict(before or [])
    pts = [(float(le), n - prev.get(le, 0)) for le, n in now]
    total = pts[-1][1] if pts else 0
    if total <= 0:
        return None
    rank = q * total
    lo, below = 0.0, 0
    for le, n in pts:
        if n >= rank:
            if le == float("inf"):
                return lo  # beyond the last bound: say the last bound
            inside = n - below
            return lo + (le - lo) * ((rank - below) / inside if inside else 1.0)
        lo, below = le, n
    return lo


class Stages:
    """Where a message's time goes before its outputs are released, one
    observation per message (a batch observes its message count at once):
    ``queued`` (arrival to its batch's start), ``compute`` (its batch's
    wall time), ``handoff`` (its batch waiting for the commit thread),
    ``commit``.  What is left of the end-to-end latency is the write."""

    NAMES = ("queued", "compute", "handoff", "commit")
    __slots__ = NAMES

    def __init__(self):
        for n in self.NAMES:
            setattr(self, n, Histogram())


class Latency:
    """End-to-end latency, frame arrival to output written, per sink.

    A batch leaves marks ``(first_seq, end_seq, arrived)`` per sink: its
    outputs numbered ``first_seq .. end_seq - 1`` came from frames that
    reached the worker at ``arrived`` (``time.monotonic()``; frames that
    arrive between two batches share the first one's time).  When the sink
    reports outputs delivered up to a sequence number, each delivered
    output is observed once: a few list operations per batch and per
    delivery, nothing per message."""

    __slots__ = ("hist", "marks")

    def __init__(self, sinks: int):
        self.hist = Histogram()
        self.marks: list[collections.deque] = [collections.deque()
                                               for _ in range(sinks)]

    def add(self, sink: int, first_seq: int, end_seq: int, arrived: float) -> None:
        dq = self.marks[sink]
        if len(dq) >= MAX_MARKS and dq[-1][1] == first_seq:
            dq[-1][1] = end_seq  # a sink that is away: merged, memory bounded
        else:
            dq.append([first_seq, end_seq, arrived])

    def delivered(self, sink: int, end_seq: int, now: float) -> None:
        if sink >= len(self.marks):
            return  # a channel to another worker, not a sink
        dq = self.marks[sink]
        observe = self.hist.observe_n
        while dq:
            m = dq[0]
            first, end, arrived = m
            if first >= end_seq:
                return
            upto = end if end <= end_seq else end_seq
            observe(now - arrived, upto - first)
            if upto < end:
                m[0] = upto
                return
            dq.popleft()


class WorkerCollector:
    """Reads a running worker's figures when scraped."""

    def __init__(self, worker):
        self.worker = worker
        self.started = time.time()

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        w = self.worker
        core = w.core
        st = core.stats
        name = w.opts.name
        app = w.app

        def counter(metric, doc, labels=()):
            return CounterMetricFamily(metric, doc, labels=["worker", *labels])

        def gauge(metric, doc, labels=()):
            return GaugeMetricFamily(metric, doc, labels=["worker", *labels])

        m = counter("wallaroo_source_messages", "Messages taken from the "
                    "application's sources, per pipeline: new ones, and those "
                    "replayed by recovery", ("pipeline", "kind"))
        for p in app.pipelines:
            m.add_metric([name, p.name, "new"], st.by_source[p.index])
            m.add_metric([name, p.name, "replayed"], st.replayed_by.get(p.name, 0))
        yield m
        if core.placement is not None and core.placement.size > 1:
            m = counter("wallaroo_channel_messages", "Messages received from "
                        "other workers, per peer: new ones, and those replayed "
                        "by recovery", ("peer", "kind"))
            for peer in core.placement.members:
                if peer != core.name:
                    m.add_metric([name, peer, "new"], st.by_peer.get(peer, 0))
                    m.add_metric([name, peer, "replayed"],
                                 st.replayed_by_peer.get(peer, 0))
            yield m
        m = counter("wallaroo_step_messages", "Messages each step took (on this "
                    "worker: a state step's messages for keys other workers own "
                    "are counted there)", ("pipeline", "step"))
        for pipeline, step, seen in core.step_counts:
            m.add_metric([name, pipeline, step], seen[0])
        yield m
        m = counter("wallaroo_sink_outputs", "Outputs produced for each sink",
                    ("sink",))
        d = counter("wallaroo_sink_delivered", "Outputs each sink delivered "
                    "(written; acknowledged, for resumable and Kafka sinks)",
                    ("sink",))
        for s in app.sinks:
            m.add_metric([name, s.label], st.by_sink.get(s.index, 0))
            d.add_metric([name, s.label], st.delivered_by_sink.get(s.index, 0))
        yield m
        yield d
        m = counter("wallaroo_failures", "Failed messages per step", ("step",))
        for step, n in sorted(core.failures.counts.items()):
            m.add_metric([name, step], n)
        yield m
        if core.timers is not None:
            m = counter("wallaroo_window_late_messages", "Messages a window "
                        "dropped as late (every window they belong to had "
                        "fired), per window state", ("state",))
            for s in app.states:
                if s.next_fire is not None:
                    m.add_metric([name, s.name], core.timers.late_by_state.get(s.name, 0))
            yield m
        m = counter("wallaroo_batches", "Batches processed")
        m.add_metric([name], st.batches)
        yield m
        m = counter("wallaroo_commits", "Commits of the worker's database")
        m.add_metric([name], w.commits)
        yield m
        m = counter("wallaroo_snapshots", "Partition snapshots written")
        m.add_metric([name], st.snapshots)
        yield m
        m = counter("wallaroo_partition_loads", "Partitions loaded from the "
                    "store (on first use after a start, or back after an eviction)")
        m.add_metric([name], sum(s.loaded for s in core.spaces.values()))
        yield m
        m = counter("wallaroo_partition_evictions", "Partitions dropped from "
                    "memory by --state-cache")
        m.add_metric([name], core.evictions)
        yield m
        g = gauge("wallaroo_partitions_in_memory", "State partitions in memory")
        g.add_metric([name], sum(len(s.parts) for s in core.spaces.values()))
        yield g
        for metric, doc, h in (
                ("wallaroo_batch_compute_seconds", "CPU time of a batch's compute",
                 st.batch_seconds),
                ("wallaroo_commit_seconds", "Wall time of a commit, in its thread",
                 w.commit_hist),
                ("wallaroo_snapshot_work_seconds",
                 "Snapshot work (pickling) in one commit", st.snapshot_seconds)):
            hm = HistogramMetricFamily(metric, doc, labels=["worker"])
            hm.add_metric([name], h.cumulative(), h.sum)
            yield hm
        hm = HistogramMetricFamily(
            "wallaroo_message_stage_seconds", "Where a message's time goes "
            "before its outputs are released, per message: queued (arrival to "
            "its batch's start), compute (its batch), handoff (waiting for the "
            "commit thread), commit", labels=["worker", "stage"])
        for stage in Stages.NAMES:
            h = getattr(st.stages, stage)
            hm.add_metric([name, stage], h.cumulative(), h.sum)
        yield hm
        h = core.latency.hist
        hm = HistogramMetricFamily(
            "wallaroo_end_to_end_latency_seconds", "A frame's arrival at this "
            "worker to its outputs written to their sink (acknowledged, for "
            "resumable and Kafka sinks)", labels=["worker"])
        hm.add_metric([name], h.cumulative(), h.sum)
        yield hm
        hm = HistogramMetricFamily("wallaroo_batch_messages",
                                   "Messages per batch", labels=["worker"])
        hm.add_metric([name], st.batch_sizes.cumulative(), st.batch_sizes.sum)
        yield hm
        g = gauge("wallaroo_inbox_bytes", "Bytes read and not yet processed")
        g.add_metric([name], w.inbox.bytes)
        yield g
        g = gauge("wallaroo_inbox_messages", "Messages read and not yet processed")
        g.add_metric([name], w.inbox.messages)
        yield g
        g = gauge("wallaroo_outbox_outputs", "Outputs not yet delivered, per sink",
                  ("sink",))
        gb = gauge("wallaroo_outbox_bytes", "Bytes of outputs not yet delivered, "
                   "per sink", ("sink",))
        for s in w.sinks:
            g.add_metric([name, s.spec.label], s.queued_outputs)
            gb.add_metric([name, s.spec.label], s.queued_bytes)
        yield g
        yield gb
        if w.cluster is not None:
            g = gauge("wallaroo_channel_backlog_batches", "Peer batches not yet "
                      "acknowledged, per peer", ("peer",))
            for c in w.cluster.senders.values():
                g.add_metric([name, c.peer], c.queued_outputs)
            yield g
        g = gauge("wallaroo_longest_loop_stall_seconds", "Longest time the event "
                  "loop did not run its tasks")
        g.add_metric([name], w.longest_stall)
        yield g
        m = counter("wallaroo_restarts", "Times this worker started again on "
                    "its resilience directory (kept in its database)")
        m.add_metric([name], max(0, core.store.starts - 1))
        yield m
        g = gauge("wallaroo_replay_progress_ratio", "Recovery's replay: inputs "
                  "replayed of those to replay (1 once recovered)")
        g.add_metric([name], w.replay_ratio())
        yield g
        g = gauge("wallaroo_uptime_seconds", "Seconds since the worker started")
        g.add_metric([name], time.time() - self.started)
        yield g


def render(registry) -> bytes:
    from prometheus_client import generate_latest
    return generate_latest(registry)


def registry_body(registry):
    """A ``serve`` body: the registry's figures, read on the loop (so
    they hold still while they are written)."""
    async def body() -> bytes:
        return render(registry)
    return body


async def bind(host: str, port: int) -> tuple[list, tuple[str, int]]:
    """The ``--metrics HOST:PORT`` listeners (port 0: any free port) and
    the first one's address."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as e:
        raise OSError(f"--metrics {host}:{port}: cannot listen: "
                      f"{e.strerror or e}") from None
    return listeners, listeners[0].socket.getsockname()[:2]


async def serve(listeners, metrics_body, log) -> None:
    """``GET /metrics``: ``await metrics_body()``; ``GET /``: the live page
    (it reads ``/metrics`` itself); anything else: 404."""
    from .web_page import PAGE

    async def handle(stream):
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                data = b""
                while b"\r\n\r\n" not in data and b"\n\n" not in data:
                    more = await stream.receive_some(4096)
                    if not more:
                        return
                    data += more
                    if len(data) > MAX_REQUEST:
                        return
                line = data.split(b"\n", 1)[0].strip()
                parts = line.split()
                path = parts[1].split(b"?")[0] if len(parts) >= 2 else b""
                if len(parts) < 2 or parts[0] != b"GET":
                    path = b""
                if path == b"/metrics":
                    body = await metrics_body()
                    head = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; "
                            b"version=0.0.4; charset=utf-8\r\n")
                elif path in (b"/", b"/index.html"):
                    body = PAGE
                    head = (b"HTTP/1.0 200 OK\r\nContent-Type: text/html; "
                            b"charset=utf-8\r\nCache-Control: no-cache\r\n")
                else:
                    body = (b"not found: the metrics are at /metrics, the live "
                            b"page at /\n")
                    head = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
                await stream.send_all(head + b"Content-Length: %d\r\n\r\n" % len(body)
                                      + body)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                OSError) as e:
            log.debug("metrics: a request failed: %s", e)
        finally:
            await trio.aclose_forcefully(stream)
    await trio.serve_listeners(handle, listeners)
