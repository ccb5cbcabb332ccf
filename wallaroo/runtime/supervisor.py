"""``wallaroo run APP --workers N``: one host, N workers (DESIGN.md §6).

The supervisor loads the application to learn its sources, listens on them
itself, and starts N workers (``initializer``, ``worker-1`` ...), each a
``wallaroo run`` process with its own database in the resilience directory.
It hands every accepted client connection to the ready worker holding the
fewest (over a Unix socket, with the descriptor), so connections spread
evenly and none lands on a dead worker; port 0 works, and the ``ready`` line
names the ports.  It tells every worker where the others' data ports are,
restarts a worker that dies (same name, after ``--restart-delay``; it
recovers from its own database while the others go on), keeps
``cluster.json`` current, copies each worker's log to ``<name>.log`` and to
its own stderr as ``<name> | <line>``, and stops them all on SIGTERM/SIGINT.

Without ``--resilience-dir`` nothing can be recovered: the death of any
worker stops the cluster with an error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import trio

from ..connectors import auth

START_FAILURES = 5  # consecutive failed starts of one worker: give up


@dataclass
class Member:
    name: str
    link: socket.socket | None = None  # the supervisor's end of the Unix socket
    proc: trio.Process | None = None
    pid: int | None = None
    state: str = "starting"  # starting | recovering | ready | down
    control: str | None = None
    data: str | None = None
    metrics: str | None = None
    restarts: int = 0
    failed_starts: int = 0
    exit_code: int | None = None
    connections: int = 0
    ready_once: bool = False
    stopping: bool = False  # it said it is draining: hand it nothing
    leaving: bool = False  # a live shrink stops it for good (live_shrink.py)
    draining: bool = False  # a live shrink takes it away: hand it nothing
    ready_event: trio.Event = field(default_factory=trio.Event)


class Supervisor:
    def __init__(self, app_path: str, worker_args: list[str], workers: int,
                 resilience_dir: str | None, restart_delay: float,
                 log: logging.Logger, spec, stop_grace: float = 60.0,
                 metrics: tuple[str, int] | None = None,
                 names: list[str] | None = None):
        self.app_path = app_path
        self.worker_args = worker_args  # what each `wallaroo run` gets
        self.n = workers
        self.resilience_dir = resilience_dir
        self.restart_delay = restart_delay
        self.log = log
        self.spec = spec
        self.stop_grace = stop_grace
        self.metrics = metrics  # --metrics: the whole cluster's figures here
        self.metrics_address: str | None = None
        if metrics is not None:  # each worker serves its own, any free port
            self.worker_args = [*worker_args, "--metrics", f"{metrics[0]}:0"]
        self.dir = resilience_dir or tempfile.mkdtemp(prefix="wallaroo-cluster-")
        self.cluster_file = os.path.join(self.dir, "cluster.json")
        from .rescale import next_names  # (rescale imports this module)
        self.names = names or next_names(["initializer"], workers - 1)
        self.members = [Member(n) for n in self.names]
        self.listeners: list[trio.SocketListener] = []
        self.sources: list[str] = []
        self.stop_asked = trio.Event()  # a stop was asked (``stopping``)
        self.failure: str | None = None
        self.exit_codes: dict[str, int] = {}
        # members that had died and waited for their restart when a stop
        # came: with their databases they recover at the next start
        self.restart_pending: set[str] = set()
        # members the stop's SIGTERM reached while they were starting (just
        # restarted: no handler yet), so it killed them; nothing is lost
        self.stopped_starting: set[str] = set()
        self._done = 0
        self._all_done = trio.Event()
        self.pausing = False  # the members stop for a rescale
        self._next_names: list[str] | None = None
        self.rescale_result: dict | None = None  # what a grow/shrink came to
        self.rescale_started = 0.0
        self.retired_procs: dict = {}  # name -> a retired worker delivering
        self.delivering: set[str] = set()  # retired workers being run
        # while a rescale runs: {"from", "to", "phase", "since"} (cluster.json)
        self.rescale_state: dict | None = None
        # a `grow --live` that stopped half-way: {"names", "old"} (live_grow.py)
        self.pending_grow: dict | None = None
        # a `shrink --live` whose members began dropping the leaving ones:
        # {"names", "old"}; until it is done a member starts with the member
        # list its own database holds (live_shrink.py)
        self.pending_shrink: dict | None = None
        self.generation_ready = trio.Event()  # set when the members are ready
        self._gen = self._outer = None  # the nurseries: members', everything

    @property
    def stopping(self) -> bool:
        return self.stop_asked.is_set()

    # -- setup -----------------------------------------------------------
    def _secret(self) -> str:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.dir, "cluster.secret")
        if not os.path.exists(path):
            auth.create_secret(path)
        return path

    async def _bind_sources(self) -> None:
        for p in self.spec.pipelines:
            src = p.source
            if src.kind in ("kafka", "gen"):  # every worker runs its own part
                self.listeners.append([])
                self.sources.append(src.address)
                continue
            try:
                ls = await trio.open_tcp_listeners(int(src.port), host=src.host)
            except (OSError, ValueError) as e:
                raise OSError(f"pipeline {p.name!r}: cannot listen on "
                              f"{src.address}: {getattr(e, 'strerror', None) or e}")
            ls = ls[:1] if int(src.port) == 0 else ls
            self.listeners.append(ls)
            host, port = ls[0].socket.getsockname()[:2]
            self.sources.append(f"{host}:{port}")

    async def _bind_metrics(self) -> list:
        if self.metrics is None:
            return []
        from .metrics import bind
        listeners, (h, p) = await bind(*self.metrics)
        self.metrics_address = f"{h}:{p}"
        return listeners[:1]

    def write_cluster_file(self) -> None:
        body = {"version": 1, "application": self.spec.name,
                "supervisor_pid": os.getpid(), "metrics": self.metrics_address,
                "workers": [
                    {"name": m.name, "pid": m.pid, "state": m.state,
                     "control": m.control, "data": m.data,
                     "sources": self.sources, "metrics": m.metrics,
                     "restarts": m.restarts} for m in self.members]}
        if self.rescale_state is not None:
            body["rescale"] = self.rescale_state
        tmp = self.cluster_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(body, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.cluster_file)

    # -- running ---------------------------------------------------------
    def formed_elsewhere(self) -> str | None:
        """Why this directory's databases belong to a cluster other than
        the one asked for (None: they do not)."""
        from .formation import saved_membership
        from .rescale import grown_from
        from ..recovery.moves import is_retired
        if not self.resilience_dir or not os.path.isdir(self.resilience_dir):
            return None
        for f in sorted(os.listdir(self.resilience_dir)):
            if not f.endswith(".db") or is_retired(self.resilience_dir, f[:-3]):
                continue
            saved = saved_membership(self.resilience_dir, f[:-3])
            if saved is not None and not grown_from(saved["members"], self.names):
                n = len(saved["members"])
                return (f"{self.resilience_dir} holds a cluster of {n} workers "
                        f"({', '.join(saved['members'])}; see {f}); this run asks "
                        f"for --workers {self.n}.  Run it with --workers {n}")
        return None

    async def run(self) -> int:
        secret = self._secret()
        if self.resilience_dir:
            from .rescale import rescale_if_asked
            code = await rescale_if_asked(self, secret)
            if code is not None:
                return code
        why = self.formed_elsewhere()
        if why is not None:
            self.log.error("%s", why)
            return 2
        await self._bind_sources()
        metrics_listeners = await self._bind_metrics()
        self.write_cluster_file()
        async with trio.open_nursery() as nursery:
            self._outer = nursery
            nursery.start_soon(self._signals, nursery)
            if metrics_listeners:
                from .cluster_metrics import cluster_body
                from .metrics import serve
                nursery.start_soon(serve, metrics_listeners,
                                   cluster_body(lambda: self.members), self.log)
            for i, ls in enumerate(self.listeners):
                for listener in ls:
                    nursery.start_soon(self._accept, i, listener)
            if self.resilience_dir:
                from .rescale import deliver_retired, serve_requests
                await nursery.start(serve_requests, self, secret)
                await nursery.start(deliver_retired, self)
            first = True
            while True:
                await self._generation(secret, first)
                first = False
                if self.stopping or self.failure or self._next_names is None:
                    break
                from .rescale import deliver_retired, rescale_live
                if not await rescale_live(self, secret):
                    break
                await nursery.start(deliver_retired, self)
            nursery.cancel_scope.cancel()
        if self.failure:
            self.log.error("%s; the workers' logs are in %s", self.failure, self.dir)
            return 1
        if not self.resilience_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        codes = [c for name, c in self.exit_codes.items()
                 if name not in self.restart_pending | self.stopped_starting]
        self.log.info("stopped: %s", ", ".join(
            f"{name} down since it exited ({_status(code)}), its restart pending "
            f"when the stop came: it recovers at the next start"
            if name in self.restart_pending else
            f"{name} {_status(code)} while it was starting (the stop came before "
            f"it could stop cleanly): it recovers at the next start"
            if name in self.stopped_starting else f"{name} {_status(code)}"
            for name, code in self.exit_codes.items()))
        if any(c not in (0, 3) for c in codes):  # an error, or killed
            return 1
        return 3 if 3 in codes else 0

    async def _generation(self, secret: str, first: bool) -> None:
        """Run the members until the cluster stops or pauses for a rescale."""
        self._done = 0
        self._all_done = trio.Event()
        self.pausing = False
        if self.stopping:
            return
        async with trio.open_nursery() as gen:
            self._gen = gen
            for m in self.members:
                gen.start_soon(self._keep_running, m, secret, gen)
            await self.all_ready()
            if not (self.stopping or self.pausing):
                sinks = ",".join(s.address for s in self.spec.sinks) or "-"
                more = (f" metrics={self.metrics_address}"
                        if self.metrics_address else "")
                if first:
                    self.log.info("ready workers=%d sources=%s sinks=%s "
                                  "cluster_file=%s%s", self.n, ",".join(self.sources),
                                  sinks, self.cluster_file, more, extra={"bare": True})
                else:
                    self.log.info("rescaled: %d workers (%s) ready", self.n,
                                  ", ".join(self.names))
                self.generation_ready.set()
            await self._all_done.wait()
            # every member died during a drain in place: the rescale goes
            # on (it drains the stopped cluster) once its request says so
            while self.pausing and self._next_names is None and not self.stopping:
                await trio.sleep(0.05)
            gen.cancel_scope.cancel()

    def begin_rescale(self) -> None:
        """From now on: no client connection is handed to a member and no
        member is restarted (a rescale is coming)."""
        self.pausing = True
        self.generation_ready = trio.Event()
        self.rescale_started = trio.current_time()

    def close_sources(self) -> None:
        for m in self.members:
            self._send(m, {"drain": True})

    def pause_for_rescale(self, names: list[str], mode: str = "rescale") -> None:
        """Stop the members (``mode``: worker.stop_mode; they are not
        restarted); the next generation has ``names``."""
        if not self.pausing:
            self.begin_rescale()
        self._next_names = list(names)
        for m in self.members:
            m.ready_event.set()
            if m.proc is not None and m.proc.returncode is None:
                if not self._send(m, {"stop": mode}):
                    m.proc.send_signal(signal.SIGTERM)
        self._gen.start_soon(self._kill_after_grace)

    async def all_ready(self) -> None:
        """Until every worker is ready (or the cluster stops)."""
        while True:
            for m in self.members:
                await m.ready_event.wait()
            if self.stopping or self.pausing or all(
                    m.state == "ready" for m in self.members):
                return
            for m in self.members:  # one exited before it was ready
                if m.state != "ready":
                    m.ready_event = trio.Event()

    async def _keep_running(self, m: Member, secret: str, nursery) -> None:
        try:
            await self._keep_running_loop(m, secret, nursery)
        finally:
            if m.leaving and m in self.members:  # it left the cluster
                self.members.remove(m)
            else:
                self._done += 1
            if self._done >= len(self.members):
                self._all_done.set()

    async def _keep_running_loop(self, m: Member, secret: str, nursery) -> None:
        while not (self.stopping or self.pausing or m.leaving):
            code = await self._run_once(m, secret)
            if self.stopping and code == -signal.SIGTERM and m.state != "ready":
                # restarted just before the stop: killed before it had its
                # handlers, with nothing done that its database lacks
                self.stopped_starting.add(m.name)
            m.state, m.pid, m.exit_code = "down", None, code
            if m.leaving:  # its earlier exits are not the cluster's stop
                self.log.info("worker %s left the cluster (%s)", m.name, _status(code))
                self.exit_codes.pop(m.name, None)
                m.ready_event.set()
                return
            self.exit_codes[m.name] = code
            self.write_cluster_file()
            m.ready_event.set()  # whoever waits for readiness: it ended
            if self.stopping or self.pausing:
                return
            if not self.resilience_dir:
                self._fail(f"worker {m.name!r} exited ({_status(code)}) and there "
                           f"is no --resilience-dir to recover it from: stopping "
                           f"the cluster", nursery)
                return
            if code == 2:  # a configuration it will refuse every time
                self._fail(f"worker {m.name!r} refused to start (see its log "
                           f"above); stopping the cluster", nursery)
                return
            if m.failed_starts >= START_FAILURES:
                self._fail(f"worker {m.name!r} failed to start {START_FAILURES} "
                           f"times in a row (see {m.name}.log); stopping the "
                           f"cluster", nursery)
                return
            m.restarts += 1
            self.log.warning("worker %s exited (%s); restarting it in %.1fs",
                             m.name, _status(code), self.restart_delay)
            with trio.move_on_after(self.restart_delay):
                await self.stop_asked.wait()  # a stop does not wait for it
            if self.stopping:  # not restarted: the stop is as for the others
                self.restart_pending.add(m.name)

    def _members_for(self, m: Member) -> list[str]:
        """The member list ``m`` starts with: the cluster's, or while a live
        shrink is under way, the one its own database holds (the members
        before or after the shrink), so that a worker that dropped the
        leaving ones does not take them back, nor one that did not drop them
        yet lose their acknowledgements (live_shrink.py)."""
        pending = self.pending_shrink
        if pending is not None and self.resilience_dir:
            from .formation import saved_membership
            saved = saved_membership(self.resilience_dir, m.name)
            if saved is not None and saved["members"] in (pending["old"],
                                                          pending["names"]):
                return list(saved["members"])
        return self.names

    def _fail(self, why: str, nursery) -> None:
        self.failure = self.failure or why
        self.log.error("%s", why)
        self._stop_all(nursery)

    async def _run_once(self, m: Member, secret: str) -> int:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        m.link = ours
        m.connections = 0
        cmd = [sys.executable, "-m", "wallaroo.cli", "run", self.app_path,
               *self.worker_args, "--name", m.name, "--cluster-members",
               ",".join(self._members_for(m)), "--cluster-secret-file", secret,
               "--supervisor-fd", str(theirs.fileno())]
        m.state = "starting"
        ready_before = m.ready_once
        try:
            proc = await trio.lowlevel.open_process(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),),
                start_new_session=True)
        finally:
            theirs.close()
        m.proc, m.pid = proc, proc.pid
        m.stopping = False
        self.write_cluster_file()
        log_path = os.path.join(self.dir, f"{m.name}.log")
        async with trio.open_nursery() as watch:
            watch.start_soon(self._notes, m, ours)
            await self._copy_log(m, proc, log_path, ready_before)
            watch.cancel_scope.cancel()
        code = await proc.wait()
        if m.state != "ready":
            m.failed_starts += 1
        try:
            ours.close()
        except OSError:
            pass
        m.link = None
        return code

    async def _notes(self, m: Member, link: socket.socket) -> None:
        """The worker's notes: a connection it was handed closed."""
        while True:
            try:
                await trio.lowlevel.wait_readable(link)
                data = link.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            if not data:
                return
            try:
                note = json.loads(data)
            except ValueError:
                continue
            if note.get("closed") is not None:
                m.connections = max(0, m.connections - 1)
            if note.get("stopping"):
                m.stopping = True

    async def _copy_log(self, m: Member, proc, log_path: str, ready_before: bool) -> None:
        with open(log_path, "ab", buffering=0) as logf:
            buf = b""
            async for data in proc.stderr:
                logf.write(data)
                buf += data
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    sys.stderr.write(f"{m.name} | {line}\n")
                    if line.startswith("ready "):
                        self._became_ready(m, line, ready_before)
                    elif "recovered " in line or "fresh start" in line:
                        m.state = "recovering" if m.state == "starting" else m.state
                sys.stderr.flush()
            if buf:
                sys.stderr.write(f"{m.name} | {buf.decode('utf-8', 'replace')}\n")

    def _became_ready(self, m: Member, line: str, again: bool) -> None:
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        m.data, m.control = fields.get("data"), fields.get("control")
        m.metrics = fields.get("metrics")
        m.state = "ready"
        m.failed_starts = 0
        m.ready_once = True
        self.write_cluster_file()
        self._broadcast_peers()
        if again:
            self.log.info("worker %s ready again", m.name)
        m.ready_event.set()

    def _broadcast_peers(self) -> None:
        peers = {m.name: _split(m.data) for m in self.members if m.data}
        for m in self.members:
            self._send(m, {"peers": peers})

    def _send(self, m: Member, msg: dict, fd: int | None = None) -> bool:
        if m.link is None:
            return False
        try:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    fd.to_bytes(4, sys.byteorder, signed=True))] if fd is not None else []
            m.link.sendmsg([json.dumps(msg).encode()], anc)
            return True
        except OSError:
            return False

    async def _accept(self, index: int, listener: trio.SocketListener) -> None:
        while not self.stopping:
            try:
                stream = await listener.accept()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            except OSError as e:
                self.log.warning("source %s: accept failed: %s", self.sources[index], e)
                await trio.sleep(0.1)
                continue
            await self._hand(index, stream)

    async def _hand(self, index: int, stream: trio.SocketStream) -> None:
        """To the ready worker holding the fewest connections; waits (a
        little) for one when none is ready."""
        deadline = trio.current_time() + 30
        while not self.stopping and trio.current_time() < deadline:
            if self.pausing:  # a rescale: the client waits for the new members
                deadline = trio.current_time() + 30
            ready = [m for m in self.members if m.state == "ready" and m.link
                     and not m.stopping and not m.draining and not self.pausing]
            if ready:
                m = min(ready, key=lambda x: x.connections)
                fd = stream.socket.fileno()
                if self._send(m, {"connection": index}, fd):
                    m.connections += 1
                    stream.socket.close()  # the worker has its own copy
                    return
            await trio.sleep(0.05)
        await trio.aclose_forcefully(stream)

    async def _signals(self, nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for signum in sigs:
                name = signal.Signals(signum).name
                if not self.stopping:
                    self.log.info("received %s: stopping every worker", name)
                    self._stop_all(nursery)
                else:
                    self.log.warning("received %s again: the workers end their "
                                     "drain at once", name)
                    for m in self.members:
                        if m.proc is not None and m.proc.returncode is None:
                            m.proc.send_signal(signal.SIGTERM)

    def _stop_all(self, nursery) -> None:
        if self.stopping:
            return
        self.stop_asked.set()
        for ls in self.listeners:
            for listener in ls:
                nursery.start_soon(listener.aclose)
        for m in self.members:
            m.ready_event.set()
            if m.proc is not None and m.proc.returncode is None:
                m.proc.send_signal(signal.SIGTERM)
        for proc in list(self.retired_procs.values()):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        nursery.start_soon(self._kill_after_grace)

    async def _kill_after_grace(self) -> None:
        await trio.sleep(self.stop_grace)
        for m in self.members:
            if m.proc is not None and m.proc.returncode is None:
                self.log.error("worker %s did not stop within %gs; killing it",
                               m.name, self.stop_grace)
                m.proc.kill()


def _split(addr: str | None):
    if not addr:
        return None
    host, _, port = addr.rpartition(":")
    return [host, int(port)]


def _status(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def run_supervisor(app_path: str, raw_args: list[str], *, workers: int,
                   resilience_dir: str | None, restart_delay: float,
                   log_level: str = "info",
                   metrics: tuple[str, int] | None = None) -> int:
    from . import logs
    from .loader import ApplicationLoadError, load_application
    from .._errors import WallarooParameterError
    log = logs.setup("supervisor", log_level)
    try:
        spec = load_application(app_path, raw_args)
    except (ApplicationLoadError, WallarooParameterError) as e:
        log.error("%s", e)
        return 2
    sup = Supervisor(app_path, _worker_args(raw_args, app_path), workers,
                     resilience_dir, restart_delay, log, spec, metrics=metrics)
    log.info("starting %d workers of application %r%s", workers, spec.name,
             f" with resilience in {resilience_dir}" if resilience_dir else
             " without resilience (a worker's death stops the cluster)")
    try:
        return trio.run(sup.run)
    except OSError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 0


# options of `wallaroo run` that are the supervisor's, not the workers'
_SUPERVISOR_ONLY = {"--workers": 1, "--restart-delay": 1, "--name": 1,
                    "--metrics": 1}


def _worker_args(raw: list[str], app_path: str) -> list[str]:
    """The command line each worker gets: the user's, without the
    supervisor's own options (and without APP, which comes first)."""
    out, skip = [], 0
    args = list(raw)
    if args and args[0] == app_path:
        args = args[1:]
    for a in args:
        if skip:
            skip -= 1
            continue
        opt = a.split("=", 1)[0]
        if opt in _SUPERVISOR_ONLY:
            skip = 0 if "=" in a else _SUPERVISOR_ONLY[opt]
            continue
        out.append(a)
    return out
