"""A PNG of the live page of a ``--metrics`` address, for the docs.

    python benchmarks/page_screenshot.py 127.0.0.1:9100 page.png --seconds 90

Runs Debian's ``chromium`` headless (``--no-sandbox``, for root) at
1280x900, lets the page scrape in real time for ``--seconds``, then takes
the screenshot through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: JSON messages ending in a NUL byte on file
descriptors 3 and 4, no extra package needed).

Real time matters: the one-line alternative

    chromium --headless --no-sandbox --screenshot=page.png \\
        --window-size=1280,900 --virtual-time-budget=60000 http://127.0.0.1:9100/

runs the page's timers in virtual time, so it shows 60 scrapes a few
milliseconds apart (real rates over very short intervals) drawn as a
minute.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class DevTools:
    """The DevTools protocol over ``--remote-debugging-pipe``."""

    def __init__(self, args: list[str]):
        to_child, self.cmd_w = os.pipe()
        self.res_r, from_child = os.pipe()
        # out of the way of 3 and 4, where the child wants them
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child, from_child)]
        for fd in (to_child, from_child):
            os.close(fd)

        def child():
            os.dup2(hi[0], 3)
            os.dup2(hi[1], 4)
        # close_fds=False: it would close 3 and 4 after child() ran; Python's
        # own descriptors are not inheritable anyway (PEP 446)
        self.p = subprocess.Popen(args + ["--remote-debugging-pipe"], preexec_fn=child,
                                  close_fds=False,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in hi:
            os.close(fd)
        self.buf = b""
        self.next_id = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                more = os.read(self.res_r, 1 << 20)
                if not more:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.p.poll()})")
                self.buf += more
            raw, self.buf = self.buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def close(self):
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError):
            pass
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        os.close(self.cmd_w)
        os.close(self.res_r)


def screenshot(addr: str, out: str, seconds: float, width: int = 1280,
               height: int = 900, browser: str = "chromium") -> dict:
    """Writes the PNG; returns what the page's <body> says (data-scrapes...)."""
    path = shutil.which(browser)
    if not path:
        raise SystemExit(f"{browser} is not on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="page-screenshot-") as profile:
        dt = DevTools([path, "--headless", "--no-sandbox", "--disable-gpu",
                       "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                       f"--user-data-dir={profile}", f"--window-size={width},{height}",
                       "about:blank"])
        try:
            target = dt.call("Target.createTarget", url=f"http://{addr}/")["targetId"]
            session = dt.call("Target.attachToTarget", targetId=target,
                              flatten=True)["sessionId"]
            dt.call("Emulation.setDeviceMetricsOverride", session, width=width,
                    height=height, deviceScaleFactor=1, mobile=False)
            time.sleep(seconds)
            body = dt.call("Runtime.evaluate", session, returnByValue=True, expression=(
                "JSON.stringify(Object.assign({}, document.body.dataset, "
                "Object.fromEntries([...document.querySelectorAll('[data-plot]')]"
                ".map(e => [e.dataset.plot, e.dataset.points]))))"))
            png = dt.call("Page.captureScreenshot", session, format="png")["data"]
        finally:
            dt.close()
    with open(out, "wb") as f:
        f.write(base64.b64decode(png))
    return json.loads(body["result"]["value"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("addr", metavar="HOST:PORT", help="the worker's --metrics address")
    ap.add_argument("out", help="the PNG to write")
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="how long the page scrapes before the screenshot (default 60)")
    ap.add_argument("--size", default="1280x900", help="window size (default 1280x900)")
    a = ap.parse_args(argv)
    w, h = (int(x) for x in a.size.lower().split("x"))
    seen = screenshot(a.addr, a.out, a.seconds, w, h)
    print(f"wrote {a.out}: {seen}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
