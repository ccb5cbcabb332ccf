"""A one-host cluster's figures at the supervisor's ``--metrics`` address.

Each worker serves its own ``/metrics`` (the supervisor starts it with
``--metrics HOST:0``; the address is in ``cluster.json``).  When the
supervisor is scraped it reads every ready worker's page at once, with a
short timeout, and serves them merged: one family per metric name, every
series keeping its ``worker`` label.  It adds ``wallaroo_worker_up``
(1 while a worker is ready; a worker that is down or does not answer has
0 and none of its series) and ``wallaroo_supervisor_restarts_total`` (the
restarts the supervisor made).
"""

from __future__ import annotations

import trio

SCRAPE_TIMEOUT = 2.0
MAX_BODY = 16 << 20


async def http_get(addr: str, path: str = "/metrics",
                   timeout: float = SCRAPE_TIMEOUT) -> bytes | None:
    """The body of ``GET path`` at ``addr`` (HOST:PORT), None if it did not
    answer 200 in time."""
    host, _, port = addr.rpartition(":")
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, int(port))
        except (OSError, ValueError):
            return None
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
                                  .encode())
            data = bytearray()
            try:
                async for chunk in stream:
                    data += chunk
                    if len(data) > MAX_BODY:
                        return None
            except trio.BrokenResourceError:
                return None
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        return body if len(status) >= 2 and status[1] == b"200" else None
    return None


class _Families:
    """What ``generate_latest`` reads: families already gathered."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def merged_body(bodies: dict[str, bytes | None], members) -> bytes:
    """``bodies``: worker name -> its /metrics text (None: no answer);
    ``members``: the supervisor's ``Member`` records."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.parser import text_string_to_metric_families
    families: dict[str, object] = {}
    for name, body in bodies.items():
        if body is None:
            continue
        try:
            parsed = list(text_string_to_metric_families(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            bodies[name] = None
            continue
        for fam in parsed:
            have = families.get(fam.name)
            if have is None:
                families[fam.name] = fam
            else:
                have.samples.extend(fam.samples)
    up = GaugeMetricFamily("wallaroo_worker_up", "1 while the worker is ready "
                           "and answered this scrape", labels=["worker"])
    restarts = CounterMetricFamily("wallaroo_supervisor_restarts", "Times the "
                                   "supervisor started the worker again",
                                   labels=["worker"])
    for m in members:
        up.add_metric([m.name], 1 if m.state == "ready" and bodies.get(m.name)
                      is not None else 0)
        restarts.add_metric([m.name], m.restarts)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), up, restarts]))
    return generate_latest(registry)


def cluster_body(current):
    """A ``metrics.serve`` body for the supervisor; ``current()``: its
    members now (they change with a rescale)."""
    async def body() -> bytes:
        members = current()
        bodies: dict[str, bytes | None] = {m.name: None for m in members}

        async def one(m):
            bodies[m.name] = await http_get(m.metrics)
        async with trio.open_nursery() as n:
            for m in members:
                if m.metrics and m.state == "ready":
                    n.start_soon(one, m)
        return merged_body(bodies, members)
    return body
