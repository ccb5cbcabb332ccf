"""Alphabet benchmark: the engine against a plain-Python loop doing the same
work, with resilience off, NORMAL and FULL, plus a hand-written durable loop
and (optionally) Bytewax.

    python benchmarks/bench_alphabet.py --messages 1000000
    python benchmarks/bench_alphabet.py --messages 200000 --repeat 3 \\
        --bytewax --profile --json results.json

Rows (see benchmarks/README.md for what each one measures):
  plain loop               in-process: frame parsing, the example's decoder,
                           partition function, state computation, encoder
  engine (resilience off)  `wallaroo run`, sender -> worker -> receiver, three
  engine (NORMAL)          processes over TCP; with --resilience-dir
  engine (FULL)            (synchronous NORMAL / FULL)
  logged loop (rows/msg)   the plain loop + one SQLite transaction per 1000
                           messages: a row per input, a row per output, a
                           snapshot per dirty state
  logged loop (rows/batch) the same, but the batch's inputs as one row and its
                           outputs as one row (what the engine itself does)
  bytewax                  Bytewax 0.21 (TestingSource, stateful_map), run_main
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _engine import ENGINE_CONFIGS, RESUMABLE_CONFIG, engine_run  # noqa: E402
from _loops import (bytewax_run, engine_in_process, load_app, logged_loop,  # noqa: E402
                    plain_loop)
from _profile import analyse_profile, profile_note  # noqa: E402
from _workload import FRAME_SIZE, make_input, validate  # noqa: E402


# -- report -----------------------------------------------------------------

def median_run(runs: list[dict]) -> dict:
    """The median over repeats: msgs/s and each latency figure separately."""
    ok = [r for r in runs if "msgs_per_s" in r]
    if not ok:
        return {"error": "; ".join(r.get("error", "?") for r in runs)}
    rates = [r["msgs_per_s"] for r in ok]
    out = {"msgs_per_s": statistics.median(rates), "msgs_per_s_min": min(rates),
           "msgs_per_s_max": max(rates), "runs": len(runs), "ok_runs": len(ok)}
    lat_keys = set().union(*(r.get("latency", {}).keys() for r in ok))
    out["latency"] = {k: statistics.median(r["latency"][k] for r in ok
                                           if k in r.get("latency", {}))
                      for k in sorted(lat_keys)}
    p99s = [r["latency"]["p99_ms"] for r in ok if "p99_ms" in r.get("latency", {})]
    if p99s:
        out["latency"]["p99_ms_min"], out["latency"]["p99_ms_max"] = min(p99s), max(p99s)
    parts = [r["breakdown"] for r in ok if r.get("breakdown")]
    if parts:
        out["breakdown"] = {k: statistics.median(b[k] for b in parts
                                                 if b.get(k) is not None)
                            for k in parts[0] if any(b.get(k) is not None
                                                     for b in parts)}
    errors = [r["error"] for r in runs if r.get("error")]
    if errors:
        out["error"] = "; ".join(errors)
    return out


def machine_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {"nproc": affinity or os.cpu_count(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(), "machine": platform.machine(),
            "sqlite": sqlite3.sqlite_version,
            "loadavg_start": list(os.getloadavg())}


def fmt_rate(x):
    return "-" if x is None else f"{x:,.0f}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}"


def fmt_ms(x):
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.0f}")


def print_report(res: dict, console) -> None:
    from rich.table import Table

    a = res["args"]
    m = res["machine"]
    console.print(f"[bold]Alphabet benchmark[/bold]: {a['messages']:,} messages "
                  f"(9-byte frames in, 13-byte records out), repeat {a['repeat']}")
    console.print(f"command: {res['command']}")
    console.print(f"machine: nproc={m['nproc']} python={m['implementation']} "
                  f"{m['python']} sqlite={m['sqlite']} {m['platform']}; load "
                  f"average {m['loadavg_start'][0]:.2f} at start, "
                  f"{m['loadavg_end'][0]:.2f} at end")
    console.print("Engine rows: three processes (sender, worker, receiver) share "
                  "the cores; in-process rows use one.  A shared machine is noisy: "
                  "use --repeat and compare ratios, not single numbers.")

    rows = res["rows"]
    plain = rows["plain_loop"]["msgs_per_s"]
    paced_rate = a["paced_rate"]
    t = Table(title="Throughput and latency (ms)", show_lines=False)
    t.add_column("configuration")
    t.add_column("msgs/s: median (min-max)", justify="right")
    t.add_column("x plain loop", justify="right")
    t.add_column("p50 full speed", justify="right")
    t.add_column("p99 full speed", justify="right")
    if paced_rate:
        t.add_column(f"p50 @{paced_rate:,.0f}/s", justify="right")
        t.add_column(f"p99 @{paced_rate:,.0f}/s (min-max)", justify="right")
    t.add_column("output")
    for key, row in rows.items():
        rate = row.get("msgs_per_s")
        lat = row.get("latency", {})
        paced = row.get("paced", {}).get("latency", {}) if paced_rate else {}
        spread = ("" if row.get("msgs_per_s_min") is None or row.get("runs", 1) < 2
                  else f" ({row['msgs_per_s_min'] / 1e3:,.0f}k-"
                       f"{row['msgs_per_s_max'] / 1e3:,.0f}k)")
        cells = [row["name"], fmt_rate(rate) + spread,
                 fmt_ratio(rate / plain if rate and plain else None),
                 fmt_ms(lat.get("p50_ms")), fmt_ms(lat.get("p99_ms"))]
        if paced_rate:
            p99 = fmt_ms(paced.get("p99_ms"))
            if paced.get("p99_ms_min") is not None and \
                    row.get("paced", {}).get("runs", 1) > 1:
                p99 += f" ({fmt_ms(paced['p99_ms_min'])}-{fmt_ms(paced['p99_ms_max'])})"
            cells += [fmt_ms(paced.get("p50_ms")), p99]
        err = row.get("error") or row.get("paced", {}).get("error")
        cells.append(f"[red]FAILED: {err}[/red]" if err else
                     row.get("validated", "-"))
        t.add_row(*cells)
    console.print(t)

    engine_keys = [c[1] for c in ENGINE_CONFIGS + [RESUMABLE_CONFIG] if c[1] in rows]
    if engine_keys:
        lt = Table(title="End-to-end latency of the engine runs (ms): sender's "
                         "write -> receiver's read")
        lt.add_column("configuration")
        lt.add_column("run")
        for c in ("p50", "p95", "p99", "max"):
            lt.add_column(c, justify="right")
        lt.add_column("msgs/s achieved", justify="right")
        for key in engine_keys:
            row = rows[key]
            runs = [("full speed (queueing)", row)]
            if paced_rate and "paced" in row:
                runs.append((f"paced {paced_rate:,.0f}/s", row["paced"]))
            for label, r in runs:
                lat = r.get("latency", {})
                lt.add_row(row["name"], label,
                           *(fmt_ms(lat.get(f"{c}_ms")) for c in
                             ("p50", "p95", "p99", "max")),
                           fmt_rate(r.get("msgs_per_s")))
        console.print(lt)
        console.print("Full-speed latency is queueing: the sender writes "
                      "everything as fast as TCP takes it, so a message waits "
                      "behind all the input buffered ahead of it (socket buffers, "
                      "the worker's inbox).  The paced runs send at a fixed rate "
                      "below capacity; their latency is what a message costs.")

    parts = [(rows[k]["name"], rows[k]["paced"]["breakdown"]) for k in engine_keys
             if rows[k].get("paced", {}).get("breakdown")]
    if parts:
        bt = Table(title=f"Where a message's time goes at {paced_rate:,.0f}/s (ms, mean "
                         f"per message, median over runs; from the worker's own "
                         f"histograms)")
        bt.add_column("configuration")
        cols = [("queued", "queued_ms"), ("compute", "compute_ms"),
                ("handoff", "handoff_ms"), ("commit", "commit_ms"),
                ("write", "write_ms"), ("end to end", "e2e_mean_ms"),
                ("e2e p50", "e2e_p50_ms"), ("e2e p99", "e2e_p99_ms"),
                ("commit p99", "commit_p99_ms")]
        for c, _ in cols:
            bt.add_column(c, justify="right")
        bt.add_column("msgs/commit", justify="right")
        for name, b in parts:
            per = (b.get("outputs") / b["commits"]) if b.get("commits") else None
            bt.add_row(name, *(f"{b[k]:.3f}" if b.get(k) is not None else "-"
                               for _, k in cols), fmt_rate(per))
        console.print(bt)
        console.print("queued: arrival at the worker to its batch's start; compute: "
                      "the batch; handoff: waiting for the commit thread; commit: "
                      "the batch's commit; write: the rest, to the output written.  "
                      "The end-to-end percentiles are interpolated within the "
                      "histogram's buckets (coarse); the table above is exact.")

    tt = Table(title="What the project targets")
    tt.add_column("figure")
    tt.add_column("value", justify="right")
    tt.add_column("rounds (min-max)", justify="right")
    tt.add_column("target", justify="right")
    tt.add_column("")
    for r in res["ratios"]:
        v = r["value"]
        status = "-" if v is None or r["target"] is None else (
            "[green]met[/green]" if r["met"] else "[red]missed[/red]")
        spread = (f"{fmt_ratio(r['min'])}-{fmt_ratio(r['max'])}" if "min" in r
                  else "-")
        tt.add_row(r["name"], fmt_ratio(v), spread, r["target_text"], status)
    console.print(tt)
    console.print("A ratio is the median over rounds of the two rows' ratio within "
                  "one round (every configuration runs once per round), so a "
                  "machine that speeds up or slows down between rounds moves "
                  "both sides alike; the paced p99 is the median over rounds.")

    for key in engine_keys:
        ws = rows[key].get("worker_stats")
        if ws:
            extra = ""
            if "resilience_dir_bytes" in rows[key]:
                extra = (f", resilience dir {rows[key]['resilience_dir_bytes'] / 1e6:.1f}"
                         f" MB at exit")
            console.print(f"{rows[key]['name']}: {ws['commits']} commits (batches), "
                          f"{ws['messages_per_commit']} messages per batch{extra}")

    prof = res.get("profile")
    if prof:
        console.print()
        rate = prof.get("msgs_per_s")
        console.print(f"[bold]Profile[/bold] of the {prof['config']} worker under "
                      f"cProfile ({fmt_rate(rate)} msgs/s while profiled)")
        if "error" in prof:
            console.print(f"[red]profile run failed: {prof['error']}[/red]")
        if "top" in prof:
            console.print(prof["top"].strip(), markup=False, highlight=False)
            console.print("[bold]Where the time goes[/bold] (tottime; a builtin is "
                          "charged to the Python function that called it):")
            for c in prof["by_category"]:
                pct = "" if c["percent"] is None else f"{c['percent']:5.1f}%"
                console.print(f"  {pct:>6}  {c['seconds']:7.2f} s  {c['category']}",
                              markup=False)
            console.print(prof["note"])

    problems = res.get("problems", [])
    if problems:
        console.print("[bold red]Problems[/bold red]")
        for p in problems:
            console.print(f"  - {p}", markup=False)


def ratio(a, b):
    return a / b if a and b else None


def build_ratios(rows: dict, per_round: dict | None = None) -> list[dict]:
    """The figures the project targets (the speed issue's): throughput
    ratios, and the paced p99 of the resilient and plain engine.  A ratio
    is the median over rounds of the two rows' ratio in the same round
    (``per_round``: row -> msgs/s per round; each round runs every
    configuration once), with its min and max; without rounds, the ratio
    of the two medians."""
    per_round = per_round or {}

    def ratio_of(a: str, b: str) -> dict:
        ra, rb = per_round.get(a), per_round.get(b)
        pairs = [x / y for x, y in zip(ra or (), rb or ()) if x and y]
        if pairs:
            return {"value": statistics.median(pairs), "min": min(pairs),
                    "max": max(pairs)}
        return {"value": ratio(rows.get(a, {}).get("msgs_per_s"),
                               rows.get(b, {}).get("msgs_per_s"))}

    def p99(k):
        return {"value": (rows.get(k, {}).get("paced") or {}).get(
            "latency", {}).get("p99_ms")}

    at_least = lambda t: (t, f">= {t:g}", lambda v: v >= t)  # noqa: E731
    none = (None, "-", None)
    specs = [
        ("engine (off) / plain loop", ratio_of("engine_off", "plain_loop"),
         *at_least(0.9)),
        ("engine (NORMAL) / engine (off)", ratio_of("engine_normal", "engine_off"),
         *at_least(0.8)),
        ("engine (NORMAL) / logged loop (row per message)",
         ratio_of("engine_normal", "logged_loop_rows"), 1.0, "> 1",
         lambda v: v > 1.0),
        ("engine (NORMAL) / logged loop (row per batch)",
         ratio_of("engine_normal", "logged_loop"), *none),
        ("engine (FULL) / engine (off)", ratio_of("engine_full", "engine_off"), *none),
        ("engine in-process (no I/O) / plain loop",
         ratio_of("engine_in_process", "plain_loop"), *none),
        ("paced p99 (ms), engine (off)", p99("engine_off"), 1.0, "<= 1 ms",
         lambda v: v <= 1.0),
        ("paced p99 (ms), engine (NORMAL)", p99("engine_normal"), 2.0, "<= 2 ms",
         lambda v: v <= 2.0),
        ("paced p99 (ms), engine (FULL)", p99("engine_full"), *none),
    ]
    if "engine_normal_rs" in rows:
        specs.append(("engine (NORMAL, resumable sinks) / engine (NORMAL)",
                      ratio_of("engine_normal_rs", "engine_normal"), *at_least(0.9)))
    for key, label in (("bytewax", "bytewax"), ("bytewax_frames",
                                                "bytewax from frames")):
        if key in rows:
            specs += [(f"engine (off) / {label}", ratio_of("engine_off", key),
                       *at_least(1.3)),
                      (f"engine (NORMAL) / {label}", ratio_of("engine_normal", key),
                       *at_least(1.3))]
    out = []
    for name, fig, target, text, check in specs:
        value = fig["value"]
        out.append({"name": name, **fig, "target": target, "target_text": text,
                    "met": (check(value) if check and value is not None else None)})
    return out


# -- main -------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Alphabet benchmark: the engine (resilience off / NORMAL / "
                    "FULL) against a plain-Python loop, a hand-written durable "
                    "loop and optionally Bytewax.",
        epilog="Example: python benchmarks/bench_alphabet.py --messages 1000000 "
               "--repeat 3 --json results.json")
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds; each runs every configuration once, and the "
                         "report gives medians over rounds")
    ap.add_argument("--paced-rate", type=float, default=50_000,
                    help="msgs/s of the paced latency runs (0: skip them)")
    ap.add_argument("--paced-seconds", type=float, default=3.0,
                    help="length of each paced run")
    ap.add_argument("--chunk-bytes", type=int, default=64 * 1024,
                    help="full speed: bytes per sender write")
    ap.add_argument("--log-batch", type=int, default=1000,
                    help="logged loop: messages per SQLite transaction")
    ap.add_argument("--bytewax", action="store_true",
                    help="add the Bytewax row (needs bytewax==0.21.1)")
    ap.add_argument("--bytewax-batch", type=int, default=1000,
                    help="TestingSource batch_size for the Bytewax row")
    ap.add_argument("--profile", action="store_true",
                    help="one more run of the worker (--profile-config) under "
                         "cProfile; print its top functions and where the "
                         "time goes")
    ap.add_argument("--resumable-sinks", action="store_true",
                    help="add the row of the engine (NORMAL) with --resumable-sinks "
                         "and a receiver that acknowledges (no fsync)")
    ap.add_argument("--profile-config", choices=["off", "normal", "full"],
                    default="off", help="which engine configuration --profile "
                    "runs (the commit thread of normal/full is not profiled)")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--profile-out", metavar="PATH",
                    help="keep the profile (pstats file) here")
    ap.add_argument("--json", metavar="PATH", help="write all numbers here")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds without progress before a run is declared failed")
    ap.add_argument("--only", default="", metavar="off,normal,full",
                    type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
                    help="run only these engine configurations (and the plain "
                         "loop), skipping the logged loops: for quick A/B runs")
    ap.add_argument("--worker-args", default="", metavar="ARGS",
                    help="extra options for every `wallaroo run`, e.g. "
                         "'--max-batch 20000'")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directories (logs, stamps)")
    a = ap.parse_args(argv)
    worker_args = shlex.split(a.worker_args)
    if a.messages < 1 or a.repeat < 1:
        ap.error("--messages and --repeat must be at least 1")

    from rich.console import Console
    console = Console(width=None if sys.stdout.isatty() else 180,
                      stderr=False)
    res: dict = {"command": shlex.join([sys.executable] + sys.argv
                                       if argv is None else ["bench_alphabet.py", *argv]),
                 "args": vars(a), "machine": machine_info(), "rows": {},
                 "problems": []}
    problems = res["problems"]
    rows = res["rows"]
    workdir = Path(tempfile.mkdtemp(prefix="wallaroo-bench-"))
    try:
        paced_n = int(a.paced_rate * a.paced_seconds) if a.paced_rate > 0 else 0
        total_n = max(a.messages, paced_n)
        console.print(f"generating {total_n:,} messages (seed {a.seed})...")
        framed_all = make_input(total_n, a.seed)
        input_path = workdir / "input.frames"
        input_path.write_bytes(framed_all)
        framed = framed_all[:a.messages * FRAME_SIZE]
        app = load_app()

        # Every configuration runs once per round, rounds one after another:
        # a shared machine's speed drifts over minutes, and a ratio of two
        # configurations measured in different minutes would carry that
        # drift.  The targets are the median of the per-round ratios.
        inproc = [("plain_loop", "plain loop", lambda: plain_loop(framed, app)),
                  ("engine_in_process", "engine in-process (no I/O)",
                   lambda: engine_in_process(framed))]
        if not a.only:
            for key, per_msg, label in (("logged_loop_rows", True, "1 row/msg"),
                                        ("logged_loop", False, "1 row/batch")):
                inproc.append((key, f"logged loop, {label}",
                               _logged(framed, app, workdir, a.log_batch, per_msg)))
        if a.bytewax:
            if importlib.util.find_spec("bytewax") is None:
                problems.append("--bytewax: bytewax is not installed (pip install "
                                "'bytewax==0.21.1', the `bench` extra)")
            else:
                for key, name, from_frames in (
                        ("bytewax", "bytewax 0.21 (run_main)", False),
                        ("bytewax_frames", "bytewax 0.21, from frames", True)):
                    inproc.append((key, name, lambda ff=from_frames: bytewax_run(
                        framed, app, a.bytewax_batch, ff)[:2] + (None,)))
        engines = [cfg for cfg in ENGINE_CONFIGS + ([RESUMABLE_CONFIG]
                                                    if a.resumable_sinks else [])
                   if not (a.only and cfg[1].removeprefix("engine_") not in a.only)]
        times: dict[str, list] = {key: [] for key, _, _ in inproc}
        outputs: dict[str, tuple] = {}
        runs: dict[str, list] = {cfg[1]: [] for cfg in engines}
        paced_runs: dict[str, list] = {cfg[1]: [] for cfg in engines}
        for rnd in range(a.repeat):
            console.print(f"round {rnd + 1}/{a.repeat}...")
            for key, name, measure in inproc:
                os.sync()  # no writeback of the run before during this one
                secs, output, *extra = measure()
                times[key].append(secs)
                outputs[key] = (output, *extra)
            for cfg in engines:
                name, key = cfg[0], cfg[1]
                console.print(f"  {name}: full speed...")
                os.sync()
                runs[key].append(engine_run(cfg, input_path, a.messages, workdir,
                                            chunk_bytes=a.chunk_bytes,
                                            timeout=a.timeout, keep=a.keep,
                                            worker_args=worker_args))
                if paced_n:
                    console.print(f"  {name}: paced at {a.paced_rate:,.0f}/s for "
                                  f"{a.paced_seconds:g} s...")
                    os.sync()
                    paced_runs[key].append(engine_run(
                        cfg, input_path, paced_n, workdir, rate=a.paced_rate,
                        breakdown=True, timeout=a.timeout, keep=a.keep,
                        worker_args=worker_args))

        def inproc_row(key: str, name: str) -> None:
            output, *extra = outputs[key]
            v = validate(framed, output)
            ts = times[key]
            rows[key] = {"name": name, "msgs_per_s": a.messages / statistics.median(ts),
                         "msgs_per_s_min": a.messages / max(ts),
                         "msgs_per_s_max": a.messages / min(ts), "runs": len(ts),
                         "seconds": ts, "validation": v, "validated": _validated(v)}
            if extra and extra[0] is not None:
                rows[key]["db_bytes"] = extra[0]
            if not v["ok"]:
                problems.append(f"{name} output failed validation")

        names = {key: name for key, name, _ in inproc}
        for key in ("plain_loop", "engine_in_process"):
            inproc_row(key, names[key])
        for cfg in engines:
            name, key = cfg[0], cfg[1]
            row = {"name": name, **median_run(runs[key]), "all_runs": runs[key]}
            last_ok = [r for r in runs[key] if "validation" in r]
            if last_ok:
                row["worker_stats"] = last_ok[-1].get("worker_stats")
                if "resilience_dir_bytes" in last_ok[-1]:
                    row["resilience_dir_bytes"] = last_ok[-1]["resilience_dir_bytes"]
            if paced_runs[key]:
                row["paced"] = {**median_run(paced_runs[key]),
                                "all_runs": paced_runs[key]}
            all_runs = runs[key] + paced_runs[key]
            row["validated"] = _engine_validated(all_runs)
            for r in all_runs:
                tag = f"{name} ({r['mode']}, {r['messages']:,} messages)"
                if r.get("error"):
                    problems.append(f"{tag}: {r['error']}")
                for ln in r.get("worker_problems", []):
                    problems.append(f"{tag}: worker log: {ln}")
                if "validation" in r and not r["validation"].get("order_ok"):
                    problems.append(f"{tag}: output records not in input order "
                                    f"(latency figures approximate)")
                if r.get("receiver", {}).get("connections", 1) > 1:
                    problems.append(f"{tag}: the sink connected "
                                    f"{r['receiver']['connections']} times")
            rows[key] = row
        for key in names:
            if key not in rows:
                inproc_row(key, names[key])

        per_round = {key: [a.messages / t for t in ts] for key, ts in times.items()}
        per_round.update({key: [r.get("msgs_per_s") for r in rs]
                          for key, rs in runs.items()})
        res["ratios"] = build_ratios(rows, per_round)

        if a.profile:
            pcfg = {c[1]: c for c in ENGINE_CONFIGS}[f"engine_{a.profile_config}"]
            console.print(f"{pcfg[0]} under cProfile...")
            prof_path = a.profile_out or str(workdir / "worker.prof")
            r = engine_run(pcfg, input_path, a.messages, workdir,
                           chunk_bytes=a.chunk_bytes, profile_path=prof_path,
                           timeout=a.timeout, keep=a.keep, worker_args=worker_args)
            prof = {"config": pcfg[0], "msgs_per_s": r.get("msgs_per_s"),
                    "path": prof_path if a.profile_out else None,
                    "worker_command": r.get("worker_command")}
            if r.get("error"):
                prof["error"] = r["error"]
                problems.append(f"profile run: {r['error']}")
            if os.path.exists(prof_path):
                prof.update(analyse_profile(prof_path, a.profile_top))
                prof["note"] = profile_note(prof)
            elif "error" not in prof:
                prof["error"] = "the worker wrote no profile (did it exit cleanly?)"
                problems.append(f"profile run: {prof['error']}")
            res["profile"] = prof
    finally:
        shutil.rmtree(workdir, ignore_errors=True) if not a.keep else None
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    print_report(res, console)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
        console.print(f"numbers written to {a.json}")
    if a.keep:
        console.print(f"temporary files kept in {workdir}")
    failed = any(row.get("error") or row.get("paced", {}).get("error")
                 or not _row_ok(row) for row in rows.values())
    return 1 if failed else 0


def _logged(framed: bytes, app, workdir: Path, batch: int, per_msg: bool):
    """One run of the logged loop in a fresh database: (seconds, output,
    database bytes)."""
    def run():
        ddir = Path(tempfile.mkdtemp(prefix="logged-", dir=workdir))
        try:
            return logged_loop(framed, app, str(ddir / "loop.db"), batch,
                               row_per_message=per_msg)
        finally:
            shutil.rmtree(ddir, ignore_errors=True)
    return run


def _validated(v: dict) -> str:
    if v["ok"]:
        return "ok" if v["order_ok"] else "ok (per letter)"
    return (f"INVALID: {v['records']:,} records, per letter "
            f"{'ok' if v['per_letter_ok'] else 'WRONG'}")


def _engine_validated(runs: list[dict]) -> str:
    vs = [r["validation"] for r in runs if "validation" in r]
    if not vs or len(vs) < len(runs):
        return "FAILED"
    bad = [v for v in vs if not v["ok"]]
    if bad:
        return _validated(bad[0])
    return "ok" if len(vs) == 1 else f"ok ({len(vs)} runs)"


def _row_ok(row: dict) -> bool:
    if "validation" in row:
        return row["validation"]["ok"]
    runs = row.get("all_runs", []) + row.get("paced", {}).get("all_runs", [])
    return bool(runs) and all(r.get("validation", {}).get("ok") for r in runs)


if __name__ == "__main__":
    sys.exit(main())
