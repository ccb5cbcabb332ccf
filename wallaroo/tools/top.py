"""``wallaroo top``: a live terminal view of a running worker or cluster.

Every ``--interval`` seconds it asks each worker for its figures (the same
answers as ``wallaroo status``: a cluster's directory, or any worker's
control address and the secret; or the Prometheus text of ``--metrics``
addresses) and shows, per worker, messages per second in and out over the
last interval, the p50 and p99 end-to-end latency over it (frame arrival
to output written), failures, inbox and outbox backlogs, the event loop's
longest stall, and its state.  On a terminal the table refreshes in place
(rich's Live); otherwise one table per interval is printed, so it can be
logged.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Callable

from ..runtime.metrics import quantile
from . import ToolError


def figures_from_status(st: dict) -> dict[str, dict]:
    """``wallaroo status`` answers -> per worker: the figures ``top`` shows."""
    out = {}
    for w in st["workers"]:
        out[w["name"]] = {
            "state": w.get("state") or "-", "pid": w.get("pid"),
            "in": w.get("messages_in"), "out": w.get("outputs"),
            "failures": w.get("failures"),
            "inbox": (w.get("inbox") or {}).get("messages"),
            "outbox": sum(s["outputs"] for s in w["sinks"]) if "sinks" in w else None,
            "channels": sum(c["batches"] for c in w["channels"])
            if "channels" in w else None,
            "latency": w.get("latency"),
            "stall": w.get("longest_loop_stall"), "error": w.get("error")}
    return out


def figures_from_metrics(addresses: list[str]) -> dict[str, dict]:
    """Each ``--metrics`` address's /metrics (a worker's, or a supervisor's
    with every worker of its cluster) -> the same figures, per worker."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, dict] = {}
    for addr in addresses:
        try:
            body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read()
        except OSError as e:
            out[addr] = {"state": "unreachable", "error": str(e)}
            continue
        figs: dict[str, dict] = {}
        down: set[str] = set()

        def fig(worker: str) -> dict:
            if worker not in figs:
                figs[worker] = {"state": "ready", "in": 0, "out": 0, "failures": 0,
                                "inbox": 0, "outbox": 0, "channels": None,
                                "stall": None, "latency": []}
            return figs[worker]
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                worker = s.labels.get("worker", addr)
                if s.name == "wallaroo_worker_up":
                    if not s.value:
                        down.add(worker)
                    continue
                f = fig(worker)
                if s.name in ("wallaroo_source_messages_total",
                              "wallaroo_channel_messages_total") \
                        and s.labels.get("kind") == "new":
                    f["in"] += s.value
                elif s.name == "wallaroo_sink_outputs_total":
                    f["out"] += s.value
                elif s.name == "wallaroo_failures_total":
                    f["failures"] += s.value
                elif s.name == "wallaroo_inbox_messages":
                    f["inbox"] = s.value
                elif s.name == "wallaroo_outbox_outputs":
                    f["outbox"] += s.value
                elif s.name == "wallaroo_channel_backlog_batches":
                    f["channels"] = (f["channels"] or 0) + s.value
                elif s.name == "wallaroo_longest_loop_stall_seconds":
                    f["stall"] = s.value
                elif s.name == "wallaroo_end_to_end_latency_seconds_bucket":
                    f["latency"].append((s.labels["le"], s.value))
        for worker in down - set(figs):
            figs[worker] = {"state": "down"}
        for worker, f in figs.items():
            out[f"{worker} ({addr})" if worker in out else worker] = f
    return out


def table(now: dict[str, dict], before: dict[str, dict] | None, seconds: float,
          title: str):
    from rich.table import Table
    t = Table(title=title, title_justify="left")
    for col in ("worker", "state", "in/s", "out/s", "p50", "p99", "failures",
                "inbox", "outbox", "channels", "loop stall"):
        t.add_column(col, justify="left" if col in ("worker", "state") else "right")

    def rate(name, key):
        a, b = (before or {}).get(name, {}).get(key), now[name].get(key)
        if a is None or b is None or seconds <= 0:
            return "-"
        return f"{max(0.0, (b - a) / seconds):,.0f}"

    def num(v):
        return "-" if v is None else f"{v:,.0f}"

    def latency(name, q):
        """Over the last interval: frame arrival to output written."""
        now_b = now[name].get("latency")
        if not now_b:
            return "-"
        v = quantile(now_b, (before or {}).get(name, {}).get("latency"), q)
        return "-" if v is None else f"{v * 1e3:.1f} ms"
    for name, f in now.items():
        stall = f.get("stall")
        t.add_row(name, f.get("state") or "-", rate(name, "in"), rate(name, "out"),
                  latency(name, 0.5), latency(name, 0.99),
                  num(f.get("failures")), num(f.get("inbox")), num(f.get("outbox")),
                  num(f.get("channels")),
                  "-" if stall is None else f"{stall * 1e3:.1f} ms")
    return t


def run_top(fetch: Callable[[], dict[str, dict]], interval: float,
            iterations: int | None, console, live: bool, title: str) -> None:
    """Poll ``fetch`` every ``interval`` seconds; ``iterations``: stop after
    that many tables (None: until interrupted)."""
    before, t_before = None, time.monotonic()
    shown = 0

    def step():
        nonlocal before, t_before
        try:
            now = fetch()
        except ToolError as e:
            raise ToolError(f"wallaroo top: {e}") from None
        t_now = time.monotonic()
        tab = table(now, before, t_now - t_before, title)
        before, t_before = now, t_now
        return tab
    if live:
        from rich.live import Live
        with Live(step(), console=console, auto_refresh=False) as view:
            while iterations is None or shown < iterations:
                time.sleep(interval)
                view.update(step(), refresh=True)
                shown += 1
        return
    step()  # the first poll only sets the baseline for the rates
    while iterations is None or shown < iterations:
        time.sleep(interval)
        console.print(step())
        shown += 1
