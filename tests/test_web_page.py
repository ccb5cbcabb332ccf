"""The live page at ``/`` of a ``--metrics`` address, looked at in headless
Chromium (Debian's ``chromium``, run with ``--no-sandbox``: the tests run as
root).  Without ``chromium`` on PATH the browser tests are skipped, unless
``WALLAROO_REQUIRE_BROWSER=1`` (CI sets it) makes that a failure.

``chromium --dump-dom --virtual-time-budget=MS`` loads the page and runs its
timers in virtual time: virtual time stands still while a fetch is under
way, so each of the page's once-a-second scrapes is a real request to the
server, only with no real second in between.  The page divides by the
difference of the worker's ``wallaroo_uptime_seconds``, so its rates are
real ones.  The test reads what the page says about itself in attributes:
``data-scrapes`` on ``<body>``, ``data-points`` and ``data-max`` on each
plot, ``data-value`` on each legend entry.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser

import pytest

from .conftest import WAIT
from .test_metrics import run_with_metrics, scrape, wait_for

BUDGET_MS = 20_000  # virtual: about 20 scrapes, a second or two of real time


def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    why = "Debian's chromium is not on PATH (apt-get install chromium)"
    if os.environ.get("WALLAROO_REQUIRE_BROWSER") == "1":
        pytest.fail(why + ", and WALLAROO_REQUIRE_BROWSER=1 requires it")
    pytest.skip(why + "; set WALLAROO_REQUIRE_BROWSER=1 to make this a failure")


def dump_dom(url: str, profile, budget_ms: int = BUDGET_MS) -> str:
    """The page's DOM once ``budget_ms`` of virtual time has passed."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
           "--window-size=1280,900", f"--virtual-time-budget={budget_ms}",
           "--dump-dom", url]
    p = subprocess.run(cmd, capture_output=True, timeout=90)
    assert p.returncode == 0 and b"<body" in p.stdout, (p.returncode, p.stderr[-3000:])
    return p.stdout.decode()


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "source", "track", "wbr"}


class Page(HTMLParser):
    """What a dumped page says: ``body`` (its attributes), ``plots`` (name:
    attributes, with the element's text under "text"), ``series`` (legend
    key: latest value, None when it has none) and ``text`` (id: text)."""

    def __init__(self, html: str):
        super().__init__()
        self.body, self.plots, self.series, self.text = {}, {}, {}, {}
        self.stack: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if "data-plot" in a:
            self.plots[a["data-plot"]] = a
            a["text"] = ""
        if "data-series" in a:
            v = a.get("data-value") or ""
            self.series[a["data-series"]] = float(v) if v else None
        if "id" in a:
            self.text[a["id"]] = ""
        if tag not in VOID:
            self.stack.append((tag, a))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, a in self.stack:
            if "data-plot" in a:
                a["text"] += data
            if "id" in a:
                self.text[a["id"]] += data

    def points(self, plot: str) -> int:
        return int(self.plots[plot]["data-points"])

    def max(self, plot: str) -> float:
        return float(self.plots[plot]["data-max"])


# -- no browser ---------------------------------------------------------------

def test_the_page_is_self_contained_html_and_other_paths_are_404(procs):
    w, rx, port, addr = run_with_metrics(procs)
    with urllib.request.urlopen(f"http://{addr}/", timeout=WAIT) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/html")
        page = r.read()
    from wallaroo.runtime.web_page import PAGE
    assert page == PAGE and page.startswith(b"<!doctype html>")
    text = page.decode()
    # nothing from the net: no absolute or scheme-relative URL anywhere, no
    # script, style sheet or image fetched from elsewhere
    assert not re.search(r"(?i)\b(https?|wss?|ftp):", text)
    assert not re.search(r"(?i)(src|href)\s*=\s*[\"']?//", text)
    assert not re.search(r"(?i)<(link|img|iframe)\b|<script\s[^>]*src|@import", text)
    # the page reads the figures relative to itself, and every plot is there
    assert 'fetch("metrics"' in text
    for plot in ("throughput", "latency", "backlog", "failures"):
        assert f'data-plot="{plot}" data-points="0"' in text
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{addr}/nothing", timeout=WAIT)
    assert e.value.code == 404
    assert w.terminate() == 0


# -- a real worker with data flowing -------------------------------------------

def feed_forever(port: int, stop: threading.Event) -> None:
    """Celsius readings in batches of 200, about 10,000 a second, until
    ``stop`` is set."""
    batch = b"".join(len(x).to_bytes(4, "big") + x
                     for x in (b"%d" % i for i in range(200)))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        try:
            while not stop.is_set():
                s.sendall(batch)
                time.sleep(0.02)
        except OSError:
            pass


def test_the_page_plots_a_running_worker(procs, tmp_path):
    chromium()
    w, rx, port, addr = run_with_metrics(procs)
    stop = threading.Event()
    feeder = threading.Thread(target=feed_forever, args=(port, stop), daemon=True)
    feeder.start()
    try:
        wait_for(lambda: sum(v for (n, _), v in scrape(addr).items()
                             if n == "wallaroo_sink_outputs_total") > 0)
        started = time.monotonic()
        page = Page(dump_dom(f"http://{addr}/", tmp_path / "profile"))
        took = time.monotonic() - started
        names = {n for n, _ in scrape(addr)}
    finally:
        stop.set()
        feeder.join(WAIT)
    assert int(page.body["data-scrapes"]) >= 2, (page.body, took)
    assert page.body["data-failed-scrapes"] == "0"
    assert page.text["status"] == "live"
    assert page.text["workers"] == "initializer"
    assert page.points("throughput") > 0, page.plots["throughput"]
    assert page.max("throughput") > 0, "the plotted throughput is all zero"
    assert {"in", "out"} <= page.series.keys()
    for plot in ("backlog", "failures"):
        assert page.points(plot) > 0, page.plots[plot]
    # outputs are written to the receiver: the latency histogram has them
    assert "wallaroo_end_to_end_latency_seconds_bucket" in names
    assert page.points("latency") > 0, page.plots["latency"]
    assert page.max("latency") > 0
    assert {"p50", "p99"} <= page.series.keys(), page.series
    assert w.terminate() == 0


# -- a cluster's figures, served by the same server code ----------------------

class FakeCluster:
    """The /metrics body of a two-worker cluster (what a supervisor will
    serve), rendered by prometheus_client: every call is one more second of
    uptime with fixed rates, and latencies of 2.5 ms (98 of 100) and
    250 ms (2 of 100) at most.  After ``serve_for`` calls the server stops
    (the cluster is gone)."""

    WORKERS = {  # votes in/s, from peers/s, out/s, failures/s, inbox, outbox, channel
        "initializer": (1000, 200, 900, 2, 10, 5, 3),
        "worker-1": (500, 300, 800, 0, 20, 7, 4),
    }

    def __init__(self, serve_for: int | None = None):
        self.calls = 0
        self.serve_for = serve_for
        self.scope = None

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        from wallaroo.runtime.metrics import SECONDS_BUCKETS
        k = self.calls
        fams = {
            "in": CounterMetricFamily("wallaroo_source_messages", "in",
                                      labels=["worker", "pipeline", "kind"]),
            "peer": CounterMetricFamily("wallaroo_channel_messages", "from peers",
                                        labels=["worker", "peer", "kind"]),
            "out": CounterMetricFamily("wallaroo_sink_outputs", "out",
                                       labels=["worker", "sink"]),
            "fail": CounterMetricFamily("wallaroo_failures", "f", labels=["worker", "step"]),
            "restarts": CounterMetricFamily("wallaroo_restarts", "r", labels=["worker"]),
            "inbox": GaugeMetricFamily("wallaroo_inbox_messages", "i", labels=["worker"]),
            "outbox": GaugeMetricFamily("wallaroo_outbox_outputs", "o",
                                        labels=["worker", "sink"]),
            "chan": GaugeMetricFamily("wallaroo_channel_backlog_batches", "c",
                                      labels=["worker", "peer"]),
            "up": GaugeMetricFamily("wallaroo_uptime_seconds", "u", labels=["worker"]),
            "lat": HistogramMetricFamily("wallaroo_end_to_end_latency_seconds", "l",
                                         labels=["worker", "sink"]),
        }
        for i, (w, (votes, peers, out, fail, inbox, outbox, chan)) in enumerate(
                self.WORKERS.items()):
            other = [x for x in self.WORKERS if x != w][0]
            fams["in"].add_metric([w, "votes", "new"], votes * k)
            fams["in"].add_metric([w, "votes", "replayed"], 0)
            fams["peer"].add_metric([w, other, "new"], peers * k)
            fams["peer"].add_metric([w, other, "replayed"], 0)
            # two sinks, one with a quote in its label (escaped in the text)
            fams["out"].add_metric([w, 'totals "a"'], out * k // 2)
            fams["out"].add_metric([w, "totals b"], out * k - out * k // 2)
            fams["fail"].add_metric([w, "decoder decoder"], fail * k)
            fams["restarts"].add_metric([w], 1)
            fams["inbox"].add_metric([w], inbox)
            fams["outbox"].add_metric([w, 'totals "a"'], outbox - 1)
            fams["outbox"].add_metric([w, "totals b"], 1)
            fams["chan"].add_metric([w, other], chan)
            fams["up"].add_metric([w], 100.0 * (i + 1) + k)
            for sink in ('totals "a"', "totals b"):
                buckets = [(repr(float(b)), (49 if b >= 0.0025 else 0) * k
                            + (1 if b >= 0.25 else 0) * k) for b in SECONDS_BUCKETS]
                buckets.append(("+Inf", 50 * k))
                fams["lat"].add_metric([w, sink], buckets, 0.1 * k)
        yield from fams.values()

    async def body(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        self.calls += 1
        if self.serve_for is not None and self.calls > self.serve_for:
            self.scope.cancel()
        registry = CollectorRegistry()
        registry.register(self)
        return generate_latest(registry)


@pytest.fixture
def serve_fake():
    """``serve_fake(cluster)``: wallaroo's metrics server on a free port in
    a thread, answering /metrics with ``cluster.body()``; its address."""
    import trio

    from wallaroo.runtime.metrics import serve
    threads = []

    def start(cluster: FakeCluster) -> str:
        ready = threading.Event()
        box = {}

        async def main():
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            box["port"] = listeners[0].socket.getsockname()[1]
            box["token"] = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as cluster.scope:
                ready.set()
                await serve(listeners, cluster.body, logging.getLogger("fake cluster"))

        t = threading.Thread(target=trio.run, args=(main,), daemon=True)
        t.start()
        assert ready.wait(WAIT)
        threads.append((t, box, cluster))
        return f"127.0.0.1:{box['port']}"
    yield start
    import trio.from_thread
    for t, box, cluster in threads:
        if t.is_alive():
            try:
                trio.from_thread.run_sync(cluster.scope.cancel, trio_token=box["token"])
            except trio.RunFinishedError:
                pass
        t.join(WAIT)


def test_the_page_plots_each_worker_of_a_cluster_and_the_latency(serve_fake, tmp_path):
    chromium()
    addr = serve_fake(FakeCluster())
    page = Page(dump_dom(f"http://{addr}/", tmp_path / "profile", budget_ms=8000))
    assert int(page.body["data-scrapes"]) >= 5, page.body
    assert page.text["workers"] == "initializer, worker-1"
    assert page.text["restarts"] == "2"
    s = page.series
    # in: what the sources read (peers' messages are not counted twice);
    # per worker: its sources and its peers
    assert s["in"] == pytest.approx(1500) and s["out"] == pytest.approx(1700)
    assert s["in initializer"] == pytest.approx(1200)
    assert s["in worker-1"] == pytest.approx(800)
    assert s["out initializer"] == pytest.approx(900)
    assert s["out worker-1"] == pytest.approx(800)
    assert "replayed" not in s  # shown once it is not zero
    assert page.max("throughput") == pytest.approx(1700)
    # 98% at most 2.5 ms, 2% in (100 ms, 250 ms]: interpolated in the buckets
    # as Prometheus' histogram_quantile does
    assert s["p50"] == pytest.approx(1.0 + 1.5 * 100 / 196)
    assert s["p99"] == pytest.approx(100 + 150 * 2 / 4)
    assert page.points("latency") > 0
    assert (s["inbox"], s["outbox"], s["chan"]) == (30, 12, 7)
    assert s["rate"] == pytest.approx(2)
    assert page.text["failures-total"].startswith(f"{2 * (page.points('failures') + 1)} ")


def test_the_page_says_when_scrapes_fail_and_keeps_trying(serve_fake, tmp_path):
    chromium()
    addr = serve_fake(FakeCluster(serve_for=4))
    page = Page(dump_dom(f"http://{addr}/", tmp_path / "profile", budget_ms=8000))
    assert page.body["data-scrapes"] == "4", page.body
    assert int(page.body["data-failed-scrapes"]) >= 2  # it kept trying
    assert page.text["status"].startswith("scrape failed at ")
    assert page.points("throughput") > 0  # what it had is still shown
