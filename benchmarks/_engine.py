"""The engine rows: one end-to-end run of `wallaroo run` with a sender and a
receiver, each in its own process, and the latency computed from their
time stamps."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import selectors
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

from _loops import APP_FILE, REPO

HERE = Path(__file__).resolve().parent
SENDER = HERE / "sender.py"
RECEIVER = HERE / "receiver.py"

ENGINE_CONFIGS = [
    # (row name, key, --resilience-dir?, --synchronous)
    ("engine (resilience off)", "engine_off", False, None),
    ("engine (NORMAL)", "engine_normal", True, "normal"),
    ("engine (FULL)", "engine_full", True, "full"),
]
# --resumable-sinks: the worker speaks the resumable sink protocol and the
# receiver acknowledges what it read (without fsync: the engine's cost only)
RESUMABLE_CONFIG = ("engine (NORMAL, resumable sinks)", "engine_normal_rs", True,
                    "normal", True)

STOPPED_RE = re.compile(r"stopped: (\d+) messages in, (\d+) outputs, (\d+) failed "
                        r"messages, .*?(?:(\d+) commits|no resilience)")


class RunFailed(Exception):
    pass


def _read_stamps(path: Path) -> list[tuple[int, int]]:
    a = array("q")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return list(zip(a[0::2], a[1::2]))


def latency_segments(send: list[tuple[int, int]], recv: list[tuple[int, int]]
                     ) -> list[tuple[int, int]]:
    """(latency_ns, message_count) runs: message i was written at the stamp
    of the sender's write that held it and arrived at the stamp of the
    receiver's read that completed its record (record i is message i's
    output: one connection, outputs in input order)."""
    segs = []
    i = j = pos = 0
    while i < len(send) and j < len(recv):
        s_end, s_t = send[i]
        r_end, r_t = recv[j]
        end = min(s_end, r_end)
        if end > pos:
            segs.append((r_t - s_t, end - pos))
            pos = end
        if s_end == end:
            i += 1
        if r_end == end:
            j += 1
    return segs


def percentiles(segs: list[tuple[int, int]], qs=(50, 95, 99)) -> dict:
    if not segs:
        return {}
    segs = sorted(segs)
    total = sum(w for _, w in segs)
    res = {}
    for q in qs:
        target = q / 100 * total
        cum = 0
        for lat, w in segs:
            cum += w
            if cum >= target:
                res[f"p{q}_ms"] = lat / 1e6
                break
    res["max_ms"] = segs[-1][0] / 1e6
    res["mean_ms"] = sum(lat * w for lat, w in segs) / total / 1e6
    return res


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def engine_run(cfg: tuple, input_path: Path, messages: int, workdir: Path, *,
               rate: float = 0.0, chunk_bytes: int = 64 * 1024,
               profile_path: str | None = None, timeout: float = 120.0,
               keep: bool = False, worker_args: list[str] | None = None,
               breakdown: bool = False) -> dict:
    """One end-to-end run: receiver, worker, sender, each its own process.
    Throughput = messages / (sender's first write -> receiver's last
    needed record).  ``breakdown``: the worker runs with ``--metrics`` and
    its own histograms are read before it stops (``result["breakdown"]``:
    where a message's time went)."""
    name, key, resilient, sync = cfg[:4]
    resumable = len(cfg) > 4 and cfg[4]
    d = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=workdir))
    py = sys.executable
    procs: list[subprocess.Popen] = []
    result: dict = {"config": name, "messages": messages,
                    "mode": "paced" if rate else "full speed"}
    if rate:
        result["rate"] = rate
    try:
        receiver = subprocess.Popen(
            [py, str(RECEIVER), "--listen", "127.0.0.1:0", "--input", str(input_path),
             "--messages", str(messages), "--stamps", str(d / "recv.stamps"),
             "--result", str(d / "recv.json"), "--idle-timeout", str(timeout)]
            + (["--resumable"] if resumable else []),
            stdout=subprocess.PIPE, text=True)
        procs.append(receiver)
        line = receiver.stdout.readline()
        if not line.startswith("listening "):
            raise RunFailed(f"receiver did not start: {line!r}")
        out_addr = line.split()[1]
        run_args = ["run", str(APP_FILE), "--in", "127.0.0.1:0", "--out", out_addr]
        if resilient:
            run_args += ["--resilience-dir", str(d / "state"), "--synchronous", sync]
        if resumable:
            run_args += ["--resumable-sinks"]
        run_args += worker_args or []
        if breakdown:
            run_args += ["--metrics", "127.0.0.1:0"]
        if profile_path:
            cmd = [py, "-m", "cProfile", "-o", profile_path, "-m", "wallaroo.cli"]
        else:
            cmd = [py, "-m", "wallaroo.cli"]
        cmd += run_args
        result["worker_command"] = shlex.join(cmd)
        log_path = d / "worker.log"
        with open(log_path, "wb") as logf:
            worker = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                      stderr=logf)
        procs.append(worker)
        source = _wait_ready(worker, log_path, 60.0)
        sender_cmd = [py, str(SENDER), "--connect", source, "--input", str(input_path),
                      "--messages", str(messages), "--stamps", str(d / "send.stamps")]
        sender_cmd += ["--rate", str(rate)] if rate else ["--chunk-bytes", str(chunk_bytes)]
        sender = subprocess.Popen(sender_cmd, stdout=subprocess.PIPE, text=True)
        procs.append(sender)
        done = _wait_done(receiver, worker, sender,
                          timeout + (messages / rate if rate else 0.0))
        try:
            sender_out, _ = sender.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunFailed("the sender did not finish") from None
        if sender.returncode != 0:
            raise RunFailed(f"sender exited {sender.returncode}")
        sent = json.loads(sender_out.strip().splitlines()[-1])
        if breakdown:
            m = re.search(r"^ready .*metrics=(\S+)", log_path.read_text(errors="replace"),
                          re.M)
            result["breakdown"] = read_breakdown(m.group(1)) if m else None
        worker.send_signal(signal.SIGTERM)
        try:
            rc = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise RunFailed("the worker did not exit within 60 s of SIGTERM") from None
        receiver.wait(timeout=timeout)
        recv = json.loads((d / "recv.json").read_text())
        log_text = log_path.read_text(errors="replace")
        result["worker_exit"] = rc
        result["worker_problems"] = [ln for ln in log_text.splitlines()
                                     if " warning: " in ln or " error: " in ln
                                     or "Traceback" in ln]
        m = STOPPED_RE.search(log_text)
        if m:
            ins, outs, fails, commits = (int(g or 0) for g in m.groups())
            result["worker_stats"] = {
                "messages_in": ins, "outputs": outs, "failed": fails,
                "commits": commits,
                "messages_per_commit": round(ins / commits, 1) if commits else None}
        if resilient and (d / "state").exists():
            result["resilience_dir_bytes"] = _dir_bytes(d / "state")
        v = recv["validation"]
        result["validation"] = v
        result["receiver"] = {k: recv[k] for k in ("connections", "timed_out",
                                                   "bytes", "reads")}
        if done != "done" or recv["done_ns"] is None:
            result["error"] = (f"receiver got {v['records']} of {messages} records"
                               + (" (timed out)" if recv["timed_out"] else ""))
            return result
        seconds = (recv["done_ns"] - sent["first_write_ns"]) / 1e9
        result["seconds"] = seconds
        result["msgs_per_s"] = messages / seconds
        result["sender_seconds"] = (sent["last_write_ns"] - sent["first_write_ns"]) / 1e9
        result["sender_writes"] = sent["writes"]
        segs = latency_segments(_read_stamps(d / "send.stamps"),
                                _read_stamps(d / "recv.stamps"))
        result["latency"] = percentiles(segs)
        result["latency_exact"] = bool(v.get("order_ok"))
        if rc != 0:
            result["error"] = f"worker exited {rc} after SIGTERM"
        elif not v["ok"]:
            result["error"] = "output failed validation"
        return result
    except RunFailed as e:
        result["error"] = str(e)
        log_path = d / "worker.log"
        if log_path.exists():
            result["worker_log_tail"] = log_path.read_text(errors="replace")[-2000:]
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        if not keep:
            shutil.rmtree(d, ignore_errors=True)


def _wait_done(receiver: subprocess.Popen, worker: subprocess.Popen,
               sender: subprocess.Popen, timeout: float) -> str:
    """Wait for the receiver's ``done`` line; fail early if the worker dies
    or the sender fails."""
    sel = selectors.DefaultSelector()
    sel.register(receiver.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if sel.select(0.2):
                return receiver.stdout.readline().strip()
            if worker.poll() is not None:
                raise RunFailed(f"the worker exited {worker.returncode} before "
                                f"all output arrived")
            if sender.poll() not in (None, 0):
                raise RunFailed(f"the sender exited {sender.returncode}")
            if time.monotonic() > deadline:
                raise RunFailed(f"not all output arrived within {timeout:.0f} s")
    finally:
        sel.close()


def read_breakdown(addr: str) -> dict:
    """From a worker's /metrics: the mean time per message in each stage
    before its outputs are released, the rest of the end-to-end latency
    (the write), the end-to-end mean, p50 and p99 (interpolated within the
    histogram's buckets), and commits, all in ms."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    from wallaroo.runtime.metrics import quantile
    body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    sums, counts, lat, commits, commit_b = {}, {}, [], 0, []
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name.startswith("wallaroo_message_stage_seconds_"):
                stage = s.labels["stage"]
                if s.name.endswith("_sum"):
                    sums[stage] = s.value
                elif s.name.endswith("_count"):
                    counts[stage] = s.value
            elif s.name == "wallaroo_end_to_end_latency_seconds_bucket":
                lat.append((s.labels["le"], s.value))
            elif s.name == "wallaroo_end_to_end_latency_seconds_sum":
                sums["e2e"] = s.value
            elif s.name == "wallaroo_end_to_end_latency_seconds_count":
                counts["e2e"] = s.value
            elif s.name == "wallaroo_commits_total":
                commits = s.value
            elif s.name == "wallaroo_commit_seconds_bucket":
                commit_b.append((s.labels["le"], s.value))
    mean = {k: 1e3 * sums[k] / counts[k] for k in sums if counts.get(k)}
    out = {f"{k}_ms": mean.get(k) for k in ("queued", "compute", "handoff", "commit")}
    if "e2e" in mean:
        out["write_ms"] = mean["e2e"] - sum(v or 0 for v in out.values())
        out["e2e_mean_ms"] = mean["e2e"]
        out["e2e_p50_ms"] = 1e3 * (quantile(lat, None, 0.5) or 0)
        out["e2e_p99_ms"] = 1e3 * (quantile(lat, None, 0.99) or 0)
    out["commits"] = commits
    if commits:
        out["commit_p99_ms"] = 1e3 * (quantile(commit_b, None, 0.99) or 0)
    out["outputs"] = counts.get("e2e", 0)
    return out


def _wait_ready(worker: subprocess.Popen, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("ready"):
                m = re.search(r"sources=(\S+)", line)
                if m:
                    return m.group(1).split(",")[0]
        if worker.poll() is not None:
            raise RunFailed(f"the worker exited {worker.returncode} before ready")
        time.sleep(0.02)
    raise RunFailed(f"the worker was not ready within {timeout:.0f} s")
