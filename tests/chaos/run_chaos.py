"""Chaos run: the sequence-window app under `wallaroo run --resilience-dir`,
fed 1..N by `wallaroo send --resumable`, while the worker is SIGKILLed at
random moments and restarted.  Then every output is validated.

    python -m tests.chaos.run_chaos --messages 100000 --kills 8 --rate 20000

With ``--exactly-once`` the worker runs ``--resumable-sinks`` and its outputs
go to ``wallaroo receive --resumable``, which is SIGKILLed too
(``--receiver-kills``): every output must arrive exactly once (0 duplicates).

Prints the figures (lost outputs, bad windows, duplicates, recovery times)
and exits non-zero if any output was lost or wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from .validate import read_frames, validate

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sequence_window.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wallaroo(*args: str) -> list[str]:
    return [sys.executable, "-m", "wallaroo.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose stderr is collected by a thread; ``wait_for``
    waits for a line matching a pattern."""

    def __init__(self, cmd: list[str], log_path: str):
        self.log = open(log_path, "a")
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self.started = time.perf_counter()
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self):
        for line in self.p.stderr:
            self.log.write(line)
            self.log.flush()
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and seen == len(self.lines)):
                    raise RuntimeError(f"no line matching {pattern!r} from "
                                       f"{self.p.args[3:5]} (exit {self.p.poll()}):\n"
                                       + "\n".join(self.lines[-20:]))
                self._cv.wait(min(left, 0.2))

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        self.kill(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.p.wait()


@dataclass
class ChaosResult:
    messages: int
    kills: int
    pauses: int
    lost: int
    bad_windows: int
    duplicates: int
    outputs: int
    final_windows_ok: bool
    sender_exit: int
    worker_exit: int
    replay_mismatch_lines: int
    restart_to_ready_s: list[float] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    replayed_inputs: list[int] = field(default_factory=list)
    seconds: float = 0.0
    workdir: str = ""
    exactly_once: bool = False
    receiver_kills: int = 0

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.bad_windows == 0 and self.final_windows_ok
                and self.sender_exit == 0 and self.worker_exit == 0
                and self.replay_mismatch_lines == 0
                and (self.duplicates == 0 or not self.exactly_once))

    def summary(self) -> str:
        def stats(xs):
            if not xs:
                return "-"
            return (f"min {min(xs):.3f}s median {statistics.median(xs):.3f}s "
                    f"max {max(xs):.3f}s")
        return "\n".join([
            f"messages {self.messages}, SIGKILLs {self.kills} of the worker"
            + (f" and {self.receiver_kills} of the resumable receiver (exactly "
               f"once)" if self.exactly_once else "")
            + f", SIGSTOP pauses {self.pauses}, wall time {self.seconds:.1f}s",
            f"lost outputs {self.lost}, bad windows {self.bad_windows}, final windows "
            f"{'ok' if self.final_windows_ok else 'WRONG'}",
            f"outputs {self.outputs}, duplicate outputs {self.duplicates}",
            f"restart -> ready (process start, import, recovery): {stats(self.restart_to_ready_s)}",
            f"recovery inside the worker: {stats(self.recovery_s)}; replayed inputs per "
            f"restart: {self.replayed_inputs}",
            f"sender exit {self.sender_exit}, final worker exit {self.worker_exit}, "
            f"replay mismatches {self.replay_mismatch_lines}",
            f"verdict: {'PASS' if self.ok else 'FAIL'}  (logs in {self.workdir})",
        ])


def run(messages: int = 20000, kills: int = 5, rate: int = 5000, seed: int | None = None,
        pauses: int = 0, workdir: str | None = None, say=print,
        exactly_once: bool = False, receiver_kills: int = 0) -> ChaosResult:
    rnd = random.Random(seed)
    workdir = workdir or tempfile.mkdtemp(prefix="wallaroo-chaos-")
    state_dir = os.path.join(workdir, "state")
    out_path = os.path.join(workdir, "received.bin")
    t_start = time.perf_counter()
    receiver_cmd = wallaroo("receive", "--listen", f"127.0.0.1:{free_port()}"
                            if exactly_once else "127.0.0.1:0", "--framing", "length",
                            "--output", out_path, *(["--resumable"] if exactly_once else []))
    receiver_log = os.path.join(workdir, "receiver.log")
    receiver = Proc(receiver_cmd, receiver_log)
    worker = sender = None
    try:
        out_addr = receiver.wait_for(r"^listening on (\S+)", 30).group(1)
        port = free_port()
        worker_cmd = wallaroo("run", APP, "--in", f"127.0.0.1:{port}", "--out", out_addr,
                              "--resilience-dir", state_dir, "--checkpoint-interval", "0.5",
                              *(["--resumable-sinks"] if exactly_once else []))
        worker_log = os.path.join(workdir, "worker.log")
        worker = Proc(worker_cmd, worker_log)
        worker.wait_for(r"^ready", 60)
        sender = Proc(wallaroo("send", f"127.0.0.1:{port}", "--u64", str(messages),
                               "--resumable", "chaos", "--rate", str(rate),
                               "--connect-timeout", "120", "--quiet"),
                      os.path.join(workdir, "sender.log"))
        flow = messages / rate
        restarts: list[float] = []
        done_kills = done_pauses = done_rkills = 0
        events = ["kill"] * kills + ["pause"] * pauses + ["rkill"] * receiver_kills
        rnd.shuffle(events)
        for ev in events:
            time.sleep(rnd.uniform(0.3, 1.7) * flow / (len(events) + 1))
            if ev == "rkill":
                receiver.kill(signal.SIGKILL)
                receiver.p.wait()
                done_rkills += 1
                say(f"SIGKILL of the receiver {done_rkills} at "
                    f"{time.perf_counter() - t_start:.2f}s")
                receiver = Proc(receiver_cmd, receiver_log)
                receiver.wait_for(r"^listening on", 30)
                continue
            if ev == "pause":
                worker.kill(signal.SIGSTOP)
                time.sleep(rnd.uniform(0.1, 0.6))
                worker.kill(signal.SIGCONT)
                done_pauses += 1
                continue
            worker.kill(signal.SIGKILL)
            worker.p.wait()
            done_kills += 1
            say(f"SIGKILL {done_kills} at {time.perf_counter() - t_start:.2f}s")
            worker = Proc(worker_cmd, worker_log)
            worker.wait_for(r"^ready", 60)
            restarts.append(time.perf_counter() - worker.started)
        sender_exit = sender.p.wait(timeout=300)
        # wait for the sink to deliver everything the worker committed
        deadline = time.monotonic() + 120
        while True:
            records = read_frames(open(out_path, "rb").read())
            rep = validate(records, messages)
            if not rep.lost or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        worker_exit = worker.stop()
        receiver.stop()
        records = read_frames(open(out_path, "rb").read())
        rep = validate(records, messages)
        log_text = open(worker_log).read()
        recov = [float(x) for x in re.findall(r"recovered .* in ([0-9.]+)s", log_text)]
        replayed = [int(x) for x in re.findall(r"replayed (\d+) inputs", log_text)]
        mismatches = len(re.findall(r"differs from the original run", log_text))
        if rep.bad_windows:
            say(f"bad windows (first 5): {rep.bad_windows[:5]}")
        if rep.lost:
            say(f"lost (first 20): {rep.lost[:20]}")
        return ChaosResult(messages=messages, kills=done_kills, pauses=done_pauses,
                           lost=len(rep.lost), bad_windows=len(rep.bad_windows),
                           duplicates=rep.duplicates, outputs=rep.windows,
                           final_windows_ok=rep.final_ok, sender_exit=sender_exit,
                           worker_exit=worker_exit, replay_mismatch_lines=mismatches,
                           restart_to_ready_s=restarts, recovery_s=recov,
                           replayed_inputs=replayed,
                           seconds=time.perf_counter() - t_start, workdir=workdir,
                           exactly_once=exactly_once, receiver_kills=done_rkills)
    finally:
        for p in (sender, worker, receiver):
            if p is not None:
                p.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--pauses", type=int, default=0, help="SIGSTOP/SIGCONT pauses too")
    ap.add_argument("--rate", type=int, default=20000, help="sender messages/s")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--exactly-once", action="store_true",
                    help="--resumable-sinks into `wallaroo receive --resumable`")
    ap.add_argument("--receiver-kills", type=int, default=0,
                    help="SIGKILLs of the resumable receiver (with --exactly-once)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    extra = (f" --exactly-once --receiver-kills {args.receiver_kills}"
             if args.exactly_once else "")
    print(f"chaos run: seed {seed}; command: python -m tests.chaos.run_chaos "
          f"--messages {args.messages} --kills {args.kills} --pauses {args.pauses} "
          f"--rate {args.rate} --seed {seed}{extra}")
    res = run(args.messages, args.kills, args.rate, seed, args.pauses,
              exactly_once=args.exactly_once, receiver_kills=args.receiver_kills)
    print(res.summary())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**asdict(res), "ok": res.ok, "seed": seed}, f, indent=2)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
