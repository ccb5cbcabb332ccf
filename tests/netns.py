"""Separate "hosts" on this machine for tests: network namespaces with their
own addresses, joined by veth pairs to a bridge in the root namespace
(10.77.0.254, where the test's senders and receivers run).  A partition is a
host's link taken down and brought back.  Needs root and iproute2; tests
skip with the reason otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

BRIDGE_ADDR = "10.77.0.254"


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    subprocess.run(cmd, check=True, capture_output=True)


def can_make_hosts() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    name = "wlprobe" + uuid.uuid4().hex[:6]
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        return f"cannot create a network namespace: {e.stderr.decode().strip()}"
    _ip("netns", "del", name)
    return None


class Hosts:
    """``n`` hosts at 10.77.0.1 .. 10.77.0.n."""

    def __init__(self, n: int):
        tag = uuid.uuid4().hex[:5]
        self.bridge = f"wlbr{tag}"
        self.names = [f"wl{tag}h{i}" for i in range(1, n + 1)]
        self.links = [f"wl{tag}v{i}" for i in range(1, n + 1)]
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_ADDR}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (ns, link) in enumerate(zip(self.names, self.links), 1):
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", link + "p")
            _ip("link", "set", link + "p", "netns", ns)
            _ip("link", "set", link, "master", self.bridge)
            _ip("link", "set", link, "up")
            _ip("addr", "add", f"{self.address(i)}/24", "dev", link + "p", ns=ns)
            _ip("link", "set", link + "p", "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)

    @staticmethod
    def address(i: int) -> str:
        return f"10.77.0.{i}"

    def run_in(self, i: int, cmd: list[str]) -> list[str]:
        """``cmd`` run on host i (1-based)."""
        return ["ip", "netns", "exec", self.names[i - 1]] + cmd

    def cut(self, i: int) -> None:
        _ip("link", "set", self.links[i - 1], "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self.links[i - 1], "up")

    def close(self) -> None:
        for ns, link in zip(self.names, self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
