"""Every runnable code block of README.md and docs/*.md, run.

The convention (docs/README.md says the same for people writing docs):

- A fenced block's language says what it is.  ``python`` blocks are run;
  ``bash``, ``sh``, ``shell`` and ``console`` blocks are command lines and
  are run; ``text``, ``json``, ``python-output``, ``output`` and blocks
  without a language are outputs, file layouts or data, and are not run.
  Any other language fails this test until it is one of those.
- A ``python`` block that defines ``application_setup`` and, at its top
  level, only imports, definitions and assignments is an application: it
  is run with ``wallaroo run BLOCK.py --in 127.0.0.1:0 --out ...``
  until its ``ready`` line (with ``--kafka_source_*``/``--kafka_sink_*``
  flags pointing at the test broker when it mentions Kafka), then stopped
  with SIGTERM.  Any other ``python`` block is run as a script
  (``python BLOCK.py``) and must exit 0.
- Command blocks: backslash continuations are joined, ``#`` comments
  dropped, and in ``console`` blocks only the lines starting with ``$ ``
  are commands (the prompt is stripped; the other lines are output).
  Every command runs in order in one bash (``set -e``: a failing command
  fails the block; write ``|| true`` where a failure is the point).
  Install commands (``pip install``, ``python3 -m venv``, ``apt``,
  ``source .venv/bin/activate``) and the test run itself (``pytest``,
  ``.ci/run``) are not run.
- Long-running commands are started in the background and waited for
  until their ready line (30 s at most), kept running while the rest of
  the block runs, then stopped with SIGTERM: ``wallaroo run`` (until a line
  starting with ``ready``), ``wallaroo receive`` without ``--expect``,
  ``--idle-timeout`` or ``--timeout`` (``listening on``), ``wallaroo top``
  without ``--iterations`` (its first line), and any command ending with
  ``&`` (the same lines for those three; others are just started).  Such
  a command fails the block if it exits by itself with a status other than
  0 (or is killed with SIGKILL by the block itself), or exits with a
  status other than 0 or 3 on SIGTERM (other tools than ``wallaroo run``
  may also die of that SIGTERM).  Only simple commands are detected
  as long-running: ``wallaroo run ... || echo refused`` runs in the
  foreground.
- Fixed ports on 127.0.0.1 / localhost are replaced, consistently within a
  block, by free ones (port 9092 by the test Kafka broker's), so blocks may
  use the ports a reader would.
- A block runs in a fresh directory holding links to the repository's
  ``examples/`` and ``benchmarks/``, and the files of the same page's
  earlier blocks marked ``<!-- file: NAME -->`` on the line right before
  their fence (a tutorial's ``app.py``, a ``readings.txt``), with
  ``wallaroo`` and ``python`` on the PATH being this repository's.
- ``<!-- not run: REASON -->`` on the line right before a fence opts the
  block out; it is reported as skipped with the reason.  The README's
  first block (install and demo, install and test) is not run.

One test per block, named ``PAGE:LINE`` (the fence's line).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

RUN_PYTHON = {"python", "py", "python3"}
RUN_SHELL = {"bash", "sh", "shell", "console"}
NOT_RUN = {"", "text", "json", "python-output", "output"}

BLOCK_TIMEOUT = 120.0  # a whole block, hard limit
READY_TIMEOUT = 30  # a long-running command's ready line
STOP_TIMEOUT = 20  # SIGTERM to exit

# Blocks that cannot carry a <!-- not run: ... --> comment (none today),
# matched on the block's exact text, so a rewritten block runs again.
KNOWN_NOT_RUN: dict = {}  # (page, block text) -> reason, for pages not yet runnable


@dataclass
class Block:
    page: str  # relative to the repository
    line: int  # the opening fence's, 1-based
    lang: str
    text: str
    marker: tuple[str, str] | None  # ("not run" | "file", value)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*(not run|file):\s*(.*?)\s*-->\s*$")


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m.group("indent")), m.group("fence")
        lang = (m.group("info").strip().split() or [""])[0].lower()
        body, j = [], i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and \
                    not stripped.strip(fence[0]):
                break
            line = lines[j]
            body.append(line[indent:] if line[:indent].strip() == ""
                        else line.lstrip())
            j += 1
        marker = None
        if i > 0:
            mm = MARKER.match(lines[i - 1])
            if mm:
                marker = (mm.group(1), mm.group(2))
        blocks.append(Block(str(path.relative_to(REPO)), i + 1, lang,
                            "\n".join(body) + "\n", marker))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in parse_blocks(page)]


def skip_reason(block: Block) -> str | None:
    """Why a block is not run, or None to run it."""
    if block.page == "README.md" and block.line == _readme_first_line():
        return ("the README's first block: installing, the demo and the test "
                "run itself")
    if block.marker and block.marker[0] == "not run" and block.marker[1]:
        return block.marker[1]
    known = KNOWN_NOT_RUN.get((block.page, block.text))
    if known:
        return known
    if block.lang in RUN_SHELL and not any(
            not _not_run_command(c) for c in commands(block)):
        return "only install or test-run commands, which are not run"
    return None


def _readme_first_line() -> int:
    return parse_blocks(REPO / "README.md")[0].line


def params():
    out = []
    for b in all_blocks():
        if b.lang in NOT_RUN and not (b.marker and b.marker[0] == "not run"):
            continue
        reason = skip_reason(b)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out.append(pytest.param(b, id=b.id, marks=marks))
    return out


# -- command lines -------------------------------------------------------------

def _scan(text: str) -> tuple[str, str | None, bool]:
    """``text`` without its ``#`` comments (quotes respected) ->
    (the text, the quote still open at its end or None, whether it ends
    with a continuation backslash)."""
    out, quote, i = [], None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            out.append(ch)
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"' and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "\\" and i + 1 < len(text):
            out.append(ch + text[i + 1])
            i += 1
        elif ch == "#" and (not out or out[-1][-1:].isspace()):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(ch)
        i += 1
    result = "".join(out).rstrip()
    continued = quote is None and result.endswith("\\")
    return result, quote, continued


def commands(block: Block) -> list[str]:
    """The block's command lines: continuations joined, comments dropped,
    quotes spanning lines kept whole, prompts stripped (``console``: only
    the ``$ `` lines start a command)."""
    out: list[str] = []
    pending: str | None = None
    for raw in block.text.split("\n"):
        if pending is None:
            if block.lang == "console":
                if not raw.startswith("$ "):
                    continue
                raw = raw[2:]
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            text = raw
        else:
            text = pending + (raw if pending.endswith("\n") else raw.lstrip())
        scanned, quote, continued = _scan(text)
        if quote:
            pending = text + "\n"
        elif continued:
            pending = scanned[:-1].rstrip() + " "
        else:
            pending = None
            if scanned.strip():
                out.append(scanned.strip())
        if pending is not None and not quote and pending.strip() == "":
            pending = None
    if pending and pending.strip():
        out.append(_scan(pending)[0].strip())
    return out


_INSTALL = re.compile(
    r"(^|&&|\|\||;)\s*(sudo\s+)?("
    r"apt(-get)?\s|\S*pip3?\s+install\b|\S*python3?\s+-m\s+(venv|pip)\b"
    r"|\S*python3?\s+-m\s+pytest\b|\S*pytest\b|\S*\.ci/run\b"
    r"|source\s+\S*activate\b|\.\s+\S*activate\b)")


def _not_run_command(cmd: str) -> bool:
    return bool(_INSTALL.search(cmd))


def _wallaroo_words(cmd: str) -> list[str] | None:
    """The words after ``wallaroo`` of a simple wallaroo command, or None."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]
    if not words:
        return None
    if os.path.basename(words[0]) == "wallaroo":
        return words[1:]
    if os.path.basename(words[0]).startswith("python") and \
            words[1:3] == ["-m", "wallaroo.cli"]:
        return words[3:]
    return None


def _simple(cmd: str) -> bool:
    return not re.search(r"\|\||&&|;|\||\$\(|`", cmd)


def ready_pattern(cmd: str) -> str | None:
    """The ready line of a long-running command ('' for one without),
    or None for a command that runs in the foreground."""
    background = cmd.endswith("&") and not cmd.endswith("&&")
    body = cmd[:-1].rstrip() if background else cmd
    words = _wallaroo_words(body) if (background or _simple(body)) else None
    pattern = None
    if words and not {"-h", "--help", "--version"} & set(words):
        sub = words[0] if words else ""
        if sub == "run":
            pattern = "^ready"
        elif sub == "receive" and not {"--expect", "--idle-timeout", "--timeout"} & {
                w.split("=")[0] for w in words}:
            pattern = "^listening on"
        elif sub == "top" and "--iterations" not in {w.split("=")[0] for w in words}:
            pattern = "."
        elif background and sub == "receive":
            pattern = "^listening on"
    if background and pattern is None:
        pattern = ""
    return pattern


_PORT = re.compile(r"\b(127\.0\.0\.1|localhost):(\d{2,5})\b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitute_ports(text: str, kafka: str | None, mapping: dict[str, str]) -> str:
    """``text`` with its fixed local ports replaced (``mapping``: the
    replacements so far, extended)."""

    def repl(m):
        port = m.group(2)
        if port == "0":
            return m.group(0)
        if port == "9092" and kafka:
            return kafka
        if port not in mapping:
            mapping[port] = str(free_port())
        return f"{m.group(1)}:{mapping[port]}"
    return _PORT.sub(repl, text)


PRELUDE = r"""
set -e
__pids=(); __names=(); __pats=()
__bg() {  # __bg INDEX PATTERN DESCRIPTION: the job just started with &
    local pid=$! log="$__LOGS/bg$1.log" deadline=$((SECONDS + __READY))
    __pids+=("$pid"); __names+=("$3"); __pats+=("$2")
    [ -z "$2" ] && return 0
    until grep -qE -- "$2" "$log" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "!! exited before its ready line ('$2'): $3"; exit 90
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "!! no ready line ('$2') within ${__READY}s: $3"; exit 91
        fi
        sleep 0.05
    done
}
__cleanup() {
    local rc=$? bad=0 i pid r
    set +e
    for ((i = ${#__pids[@]} - 1; i >= 0; i--)); do  # the last started first
        pid=${__pids[$i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq $((__STOP * 20))); do
                kill -0 "$pid" 2>/dev/null || break; sleep 0.05
            done
            if kill -0 "$pid" 2>/dev/null; then
                echo "!! still running ${__STOP}s after SIGTERM (killed): ${__names[$i]}"
                kill -KILL "$pid"; bad=1
            fi
            wait "$pid" 2>/dev/null; r=$?
            # a worker must stop cleanly (3: without resilience, input was
            # dropped); other tools may just die of the SIGTERM (143)
            if [ "${__pats[$i]}" != "^ready" ] && [ "$r" -eq 143 ]; then r=0; fi
            case $r in 0|3) ;; *) echo "!! exit status $r after SIGTERM: ${__names[$i]}"; bad=1;; esac
        else
            wait "$pid" 2>/dev/null; r=$?
            # 137: SIGKILLed by the block itself; 127: the block waited for it
            case $r in 0|137|127) ;; *) echo "!! exited by itself with status $r: ${__names[$i]}"; bad=1;; esac
        fi
    done
    if [ "$rc" -ne 0 ]; then exit "$rc"; fi
    exit $bad
}
trap __cleanup EXIT
"""


def shell_script(cmds: list[str], logs: Path) -> str:
    lines = [f"__LOGS={shlex.quote(str(logs))}", f"__READY={READY_TIMEOUT}",
             f"__STOP={STOP_TIMEOUT}", PRELUDE]
    for n, cmd in enumerate(cmds):
        lines.append(f"echo {shlex.quote('+ ' + cmd)} >&2")
        if _not_run_command(cmd):
            lines.append(": not run: install or test run")
            continue
        pattern = ready_pattern(cmd)
        if pattern is None:
            lines.append(cmd)
            continue
        body = cmd[:-1].rstrip() if cmd.endswith("&") else cmd
        log = f'"$__LOGS/bg{n}.log"'
        if re.search(r"(^|\s)(1?>|>>|&>)\s*\S", body):
            redirect = f"2>>{log}"  # the command's own stdout redirection stays
        else:
            redirect = f">{log} 2>&1"
        lines.append(f"{body} {redirect} &")
        lines.append(f"__bg {n} {shlex.quote(pattern)} {shlex.quote(body)}")
    return "\n".join(lines) + "\n"


# -- running -------------------------------------------------------------------

def _bin_dir(tmp: Path) -> Path:
    """``wallaroo`` and ``python`` of this repository's environment."""
    d = tmp / "_bin"
    d.mkdir()
    for name, target in (("wallaroo", f'exec {shlex.quote(sys.executable)} -m '
                                      f'wallaroo.cli "$@"'),
                         ("python", f'exec {shlex.quote(sys.executable)} "$@"'),
                         ("python3", f'exec {shlex.quote(sys.executable)} "$@"')):
        p = d / name
        p.write_text(f"#!/bin/sh\n{target}\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return d


def _workdir(tmp: Path, block: Block, files: dict[str, str]) -> Path:
    work = tmp / "work"
    work.mkdir()
    for name in ("examples", "benchmarks"):
        (work / name).symlink_to(REPO / name)
    for b in parse_blocks(REPO / block.page):
        if b.line >= block.line:
            break
        if b.marker and b.marker[0] == "file":
            (work / b.marker[1]).write_text(b.text, encoding="utf-8")
    for name, text in files.items():
        (work / name).write_text(text, encoding="utf-8")
    return work


def _leftovers(work: Path) -> list[int]:
    """Processes of ours still running in ``work`` (cwd inside it)."""
    mine, found = os.getuid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != mine:
                continue
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == str(work) or cwd.startswith(str(work) + os.sep):
            found.append(int(entry))
    return found


def run_shell(cmds: list[str], tmp: Path, block: Block, kafka: str | None,
              files: dict[str, str] | None = None) -> str:
    """Run ``cmds`` as the convention says, in a fresh directory with the
    page's earlier files and ``files``; fail the test with everything
    that was printed if anything went wrong; returns what it printed."""
    work = _workdir(tmp, block, files or {})
    logs = tmp / "logs"
    logs.mkdir()
    mapping: dict[str, str] = {}
    cmds = [substitute_ports(c, kafka, mapping) for c in cmds]
    script = shell_script(cmds, logs)
    (tmp / "block.sh").write_text(script)
    env = {**os.environ, "PATH": f"{_bin_dir(tmp)}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(
               [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    t0 = time.monotonic()
    p = subprocess.Popen(["bash", str(tmp / "block.sh")], cwd=work, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
        out, _ = p.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
    left = _leftovers(work)
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _leftovers(work)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    took = time.monotonic() - t0
    if p.returncode == 0 and not timed_out and not left:
        return out.decode("utf-8", "replace")
    report = [f"{block.id} failed after {took:.1f}s"
              + (f" (timed out after {BLOCK_TIMEOUT:.0f}s)" if timed_out else "")
              + (f" (exit status {p.returncode})" if not timed_out else ""),
              f"ports replaced: {mapping}" if mapping else "",
              f"processes left running (killed): {left}" if left else "",
              "-- output --", out.decode("utf-8", "replace")[-8000:]]
    for log in sorted(logs.glob("bg*.log")):
        n = int(log.stem[2:])
        report += [f"-- background command {n}: {cmds[n]} --",
                   log.read_text(errors="replace")[-4000:]]
    pytest.fail("\n".join(r for r in report if r), pytrace=False)


def _is_application(text: str) -> bool:
    """An application module: defines ``application_setup`` and, at its
    top level, only imports, definitions and assignments (a block that
    also runs something, an ``assert``, a call, is a script)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False  # run as a script: python shows the error
    quiet = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
             ast.ClassDef, ast.Assign, ast.AnnAssign)
    defines = any(isinstance(n, ast.FunctionDef) and n.name == "application_setup"
                  for n in tree.body)
    docstring = [n for n in tree.body[:1] if isinstance(n, ast.Expr)
                 and isinstance(n.value, ast.Constant)]
    return defines and all(isinstance(n, quiet) or n in docstring
                           for n in tree.body)


def _kafka_flags(kafka: str) -> list[str]:
    return ["--kafka_source_topic", "snippet-in", "--kafka_source_brokers", kafka,
            "--kafka_sink_topic", "snippet-out", "--kafka_sink_brokers", kafka]


@pytest.mark.parametrize("block", params())
def test_snippet(block: Block, tmp_path, request):
    if block.marker and block.marker[0] == "not run":
        pytest.fail(f"{block.id}: <!-- not run: --> needs a reason", pytrace=False)
    if block.lang in RUN_PYTHON:
        app = _is_application(block.text)
        name = block.marker[1] if block.marker and block.marker[0] == "file" \
            else "snippet_app.py" if app else "snippet.py"
        kafka = None
        if app:
            flags = ""
            if "kafka" in block.text.lower():
                kafka = request.getfixturevalue("kafka_broker").bootstrap
                flags = " " + " ".join(_kafka_flags(kafka))
            # three addresses each, for applications of several pipelines
            # or sinks (the sinks retry until stopped: nobody listens)
            outs = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
            cmd = (f"wallaroo run {name} --in 127.0.0.1:0,127.0.0.1:0,"
                   f"127.0.0.1:0 --out {outs}{flags}")
        else:
            cmd = f"python {name}"
        run_shell([cmd], tmp_path, block, kafka, {name: block.text})
        return
    if block.lang in RUN_SHELL:
        kafka = None
        if re.search(r"\b(127\.0\.0\.1|localhost):9092\b", block.text):
            kafka = request.getfixturevalue("kafka_broker").bootstrap
        run_shell(commands(block), tmp_path, block, kafka)
        return
    pytest.fail(f"{block.id}: a ```{block.lang} block: this test runs python, "
                f"bash, sh, shell and console blocks and leaves "
                f"{sorted(NOT_RUN)} alone; mark it as one of those, or opt it "
                f"out with <!-- not run: REASON --> on the line before",
                pytrace=False)


def test_the_convention_is_documented():
    """docs/README.md tells writers the convention this test applies."""
    text = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    for words in ("<!-- not run:", "<!-- file:", "```python", "ready"):
        assert words in text, words


# -- the runner itself ---------------------------------------------------------

def test_command_lines_are_joined_stripped_and_prompted():
    bash = Block("x.md", 1, "bash", "# a comment\nwallaroo run app.py \\\n"
                 "    --in 127.0.0.1:7010   # where\necho '# kept' # dropped\n", None)
    assert commands(bash) == ["wallaroo run app.py --in 127.0.0.1:7010",
                              "echo '# kept'"]
    console = Block("x.md", 1, "console", "$ wallaroo status ./state\nworker ...\n"
                    "$ echo a \\\n  b\n", None)
    assert commands(console) == ["wallaroo status ./state", "echo a b"]
    quoted = Block("x.md", 1, "bash", "python -c '\nimport sys  # kept\n"
                   "print(1)'   # dropped\nls\n", None)
    assert commands(quoted) == ["python -c '\nimport sys  # kept\nprint(1)'", "ls"]
    assert ready_pattern("wallaroo run app.py --in 127.0.0.1:7010") == "^ready"
    assert ready_pattern("wallaroo run app.py || echo refused") is None
    assert ready_pattern("wallaroo receive --listen 127.0.0.1:7002") == "^listening on"
    assert ready_pattern("wallaroo receive --listen 127.0.0.1:0 --expect 3") is None
    assert ready_pattern("wallaroo receive --listen 127.0.0.1:0 --expect 3 &") \
        == "^listening on"
    assert ready_pattern("wallaroo top ./state") == "."
    assert ready_pattern("wallaroo top ./state --iterations 2") is None
    assert ready_pattern("wallaroo send 127.0.0.1:7010 --u64 5 &") == ""
    assert ready_pattern("wallaroo run --help") is None
    assert _not_run_command("python3 -m venv .venv && .venv/bin/pip install -q .")
    assert _not_run_command("source .venv/bin/activate")
    assert not _not_run_command("python examples/word_count/demo.py")


@pytest.mark.parametrize("cmds,words", [
    (["true", "false", "echo never"], "exit status 1"),
    (["wallaroo run no_such_app.py --in 127.0.0.1:0 --out 127.0.0.1:7002"],
     "exited before its ready line"),
    (["python -c 'import sys; sys.exit(4)' &", "sleep 0.5"],
     "exited by itself with status 4"),
])
def test_a_failing_block_fails(cmds, words, tmp_path):
    block = Block("README.md", 0, "bash", "", None)
    with pytest.raises(pytest.fail.Exception) as e:
        run_shell(cmds, tmp_path, block, None)
    assert words in str(e.value)


def test_long_running_commands_are_kept_then_stopped(tmp_path):
    block = Block("README.md", 0, "bash", "", None)
    run_shell(["wallaroo receive --listen 127.0.0.1:7002 --framing length "
               "--format hex --output got.txt",
               "wallaroo send 127.0.0.1:7002 --u64 1 --start 7",
               "sleep 0.3", "grep -q 0000000000000007 got.txt"],
              tmp_path, block, None)


def test_top_without_iterations_runs_until_the_block_ends(tmp_path):
    block = Block("README.md", 0, "bash", "", None)
    out = run_shell(["wallaroo receive --listen 127.0.0.1:7002",
                     "wallaroo run examples/reverse/reverse.py --in 127.0.0.1:7010 "
                     "--out 127.0.0.1:7002 --metrics 127.0.0.1:9100",
                     "wallaroo top --metrics 127.0.0.1:9100 --interval 0.2",
                     "sleep 0.5"], tmp_path, block, None)
    assert "+ sleep 0.5" in out
