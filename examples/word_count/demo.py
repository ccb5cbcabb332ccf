"""Run the word count application end to end, with real processes and
sockets, and check every count it reports.

    python examples/word_count/demo.py

It starts ``wallaroo receive`` (the sink's end), ``wallaroo run
word_count.py`` (the worker), sends ``sample.txt`` with ``wallaroo send``,
waits for one output line per word occurrence, stops the worker with
SIGTERM (it must exit 0) and the receiver, checks that the last count seen
for every word is that word's count in the sample, and prints the most
frequent words.  Exit status 0 when all of that held, 1 otherwise (with the
worker's log).
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "word_count.py")
SAMPLE = os.path.join(HERE, "sample.txt")
WALLAROO = [sys.executable, "-m", "wallaroo.cli"]


class DemoFailed(Exception):
    pass


class Child:
    """A ``wallaroo`` subprocess whose stderr is read by a thread, line by
    line, so it never blocks and is there to show if something fails."""

    def __init__(self, name: str, args: list[str]):
        self.name = name
        self.args = args
        self.proc = subprocess.Popen(
            WALLAROO + args, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            errors="replace")
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, test, timeout: float, what: str) -> str:
        """The first stderr line for which ``test(line)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoFailed(f"{self.name}: no {what} within {timeout:.0f}s")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise DemoFailed(f"{self.name} exited (status "
                                 f"{self.proc.wait()}) before {what}")
            if test(line):
                return line

    def stop(self, timeout: float) -> int:
        """SIGTERM, wait; -> exit status (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DemoFailed(f"{self.name} did not stop within {timeout:.0f}s "
                             f"of SIGTERM; killed") from None
        self._thread.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        self._thread.join(2)
        return "\n".join("    " + line for line in self.lines) or "    (nothing)"


def expected_counts(sample: str):
    """Split every line as ``wallaroo send --file`` frames it and as the
    application's ``Split`` does: -> (messages, Counter of words)."""
    sys.path.insert(0, HERE)
    try:
        from word_count import Split
    finally:
        sys.path.remove(HERE)
    split = Split()
    counts: collections.Counter[str] = collections.Counter()
    with open(sample, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line
    for line in lines:
        counts.update(split.compute_multi(line.removesuffix("\r")))
    return len(lines), counts


class LineCounter:
    """Counts the lines of a file that another process is appending to,
    reading only what was added since the last call."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.lines = 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines


def parse_output(path: str) -> tuple[int, dict[str, int]]:
    """-> (output lines, last count seen per word)."""
    last: dict[str, int] = {}
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            n += 1
            word, sep, count = line.rstrip("\n").rpartition(" => ")
            if not sep or not count.isdigit():
                raise DemoFailed(f"output line {n} is not 'word => count': "
                                 f"{line!r}")
            last[word] = int(count)
    return n, last


def run_demo(args, out) -> int:
    try:
        messages, expected = expected_counts(args.sample)
    except (OSError, UnicodeDecodeError) as e:
        print(f"FAILED: cannot read the sample {args.sample!r}: {e}",
              file=sys.stderr)
        return 1
    total = sum(expected.values())
    rel = os.path.relpath(args.sample)
    print(f"word count demo: {rel} ({messages} lines, {total} words, "
          f"{len(expected)} distinct)", file=out)
    children: list[Child] = []
    worker = None
    with tempfile.TemporaryDirectory(prefix="wallaroo-demo-") as tmp:
        output = os.path.join(tmp, "received.txt")
        try:
            receiver = Child("receiver", [
                "receive", "--listen", "127.0.0.1:0", "--framing", "lines",
                "--format", "raw", "--output", output])
            children.append(receiver)
            first = receiver.wait_for_line(lambda line: True, args.start_timeout,
                                           "'listening on' line")
            if not first.startswith("listening on "):
                raise DemoFailed(f"receiver: unexpected first line {first!r}")
            sink_addr = first.split()[-1]
            print(f"  receiver  listening on {sink_addr}", file=out)

            worker_args = ["run", APP, "--in", "127.0.0.1:0", "--out", sink_addr]
            if args.resilience_dir:
                worker_args += ["--resilience-dir", args.resilience_dir]
            worker = Child("worker", worker_args)
            children.append(worker)
            ready = worker.wait_for_line(lambda line: line.startswith("ready"),
                                         args.start_timeout, "'ready' line")
            fields = dict(f.split("=", 1) for f in ready.split()[1:] if "=" in f)
            source = fields.get("sources", "")
            if not source:
                raise DemoFailed(f"worker: no sources= in {ready!r}")
            print(f"  worker    ready, source {source}", file=out)

            t0 = time.monotonic()
            try:
                sent = subprocess.run(
                    WALLAROO + ["send", source, "--file", args.sample,
                                "--quiet"],
                    stdin=subprocess.DEVNULL, capture_output=True, text=True,
                    timeout=args.timeout)
            except subprocess.TimeoutExpired:
                raise DemoFailed(f"wallaroo send did not finish within "
                                 f"{args.timeout:g}s") from None
            if sent.returncode != 0:
                raise DemoFailed(f"wallaroo send exited {sent.returncode}: "
                                 f"{sent.stderr.strip()}")
            summary = sent.stderr.strip().splitlines()
            print(f"  sender    {summary[-1] if summary else 'done'}", file=out)

            deadline = t0 + args.timeout
            count_lines = LineCounter(output)
            got = count_lines()
            while got < total:
                if worker.proc.poll() is not None:
                    raise DemoFailed(f"the worker exited (status "
                                     f"{worker.proc.returncode}) after "
                                     f"{got} of {total} outputs")
                if time.monotonic() > deadline:
                    raise DemoFailed(f"timed out after {args.timeout:g}s with "
                                     f"{got} of {total} output lines")
                time.sleep(0.02)
                got = count_lines()
            elapsed = time.monotonic() - t0
            print(f"  receiver  {got} of {total} output lines", file=out)

            code = worker.stop(args.stop_timeout)
            if code != 0:
                raise DemoFailed(f"the worker exited {code} on SIGTERM, not 0")
            print("  worker    stopped on SIGTERM, exit status 0", file=out)
            code = receiver.stop(args.stop_timeout)
            if code != 0:
                raise DemoFailed(f"the receiver exited {code}, not 0")

            lines, last = parse_output(output)
            if lines != total:
                raise DemoFailed(f"{lines} output lines, expected {total}")
            wrong = sorted(w for w in set(expected) | set(last)
                           if last.get(w) != expected.get(w))
            if wrong:
                detail = ", ".join(f"{w!r}: got {last.get(w)} expected "
                                   f"{expected.get(w)}" for w in wrong[:5])
                raise DemoFailed(f"{len(wrong)} final counts differ from the "
                                 f"sample: {detail}")
        except (DemoFailed, OSError) as e:
            for child in children:
                child.kill()
            print(f"\nFAILED: {e}", file=out)
            for child in reversed(children):
                print(f"\n--- {child.name} stderr ---\n{child.log()}", file=out)
            return 1
        finally:
            for child in children:
                child.kill()

    top = sorted(last.items(), key=lambda kv: (-kv[1], kv[0]))[:args.top]
    width = max(len(w) for w, _ in top) if top else 0
    biggest = top[0][1] if top else 1
    print(f"\ntop {len(top)} words:", file=out)
    for rank, (word, count) in enumerate(top, 1):
        bar = "#" * max(1, round(30 * count / biggest))
        print(f"  {rank:>3}. {word:<{width}}  {count:>6}  {bar}", file=out)
    rate = total / elapsed if elapsed > 0 else float("inf")
    print(f"\n{len(last)} words, {total} counts from {messages} messages in "
          f"{elapsed:.2f} s ({rate:,.0f} counts/s); every final count matches "
          f"the sample", file=out)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Run examples/word_count end to end with real processes.")
    parser.add_argument("--sample", default=SAMPLE,
                        help="text file to count (default: sample.txt here)")
    parser.add_argument("--top", type=int, default=20,
                        help="how many words to list (default 20)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for all outputs (default 60)")
    parser.add_argument("--start-timeout", type=float, default=30.0,
                        help="seconds to wait for each process to be ready")
    parser.add_argument("--stop-timeout", type=float, default=20.0,
                        help="seconds to wait for each process to stop")
    parser.add_argument("--resilience-dir",
                        help="run the worker with this --resilience-dir (a new "
                             "or empty directory, since the counts are checked "
                             "against the sample alone)")
    args = parser.parse_args(argv)
    if args.resilience_dir and os.path.isdir(args.resilience_dir) \
            and os.listdir(args.resilience_dir):
        print(f"FAILED: --resilience-dir {args.resilience_dir!r} is not empty: "
              f"its counts would add to the sample's", file=sys.stderr)
        return 1
    if not os.path.isfile(args.sample):
        print(f"FAILED: sample file {args.sample!r} does not exist",
              file=sys.stderr)
        return 1
    try:
        return run_demo(args, sys.stdout)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
