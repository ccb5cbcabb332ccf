"""Start and stop a local Kafka-protocol broker for tests, demos and
benchmarks (not for production: it keeps everything in one JSON file).

The broker is the native binary shipped inside the PyPI wheel ``noida-db``
(``site-packages/noida_db/noida-db``).  We run that binary directly, not the
``noida-db`` console script: the script is a Python wrapper that runs the
binary as a *child* (``subprocess.call``), so a signal sent to the wrapper's
PID would not reach the broker itself.

Facts this module relies on (checked with noida-db 0.2.3):

* ``noida-db start --data-dir DIR --only kafka --kafka-port 0`` runs in the
  foreground, binds 127.0.0.1 on a free port and prints, within a few ms::

      noida-db 0.2.3 | data dir: DIR
        kafka          127.0.0.1:44631
      press Ctrl-C to stop

  It also writes ``DIR/noida.control.json`` (pid, control port, token) while
  running, and prints a harmless loader warning on stderr:
  ``... weak version `GLIBC_2.39' not found ...``.
* All Kafka state (topics, records, committed offsets) is one JSON snapshot,
  ``DIR/kafka.json``, rewritten about 1 s after a change and again on a clean
  shutdown.  SIGTERM (or SIGINT) is a clean shutdown: it saves and exits
  with status 0 in well under a second.  SIGKILL may lose the last second
  of writes, so this module never sends it.
* Restarting on the same DIR with ``--kafka-port 0`` picks a new port and
  advertises the new one in metadata, so clients must use the new bootstrap
  address that ``start()`` returns.

Only the standard library and ``confluent_kafka`` are used.

Usage::

    from wallaroo.tools.kafka_broker import Broker

    with Broker() as b:                      # temporary data dir
        bootstrap = b.bootstrap              # "127.0.0.1:PORT"
        b.create_topic("in", partitions=3)

    b = Broker()
    bootstrap = b.start("/tmp/mydata")      # persistent data dir
    ...
    b.stop()

pytest fixture example (put it in conftest.py)::

    import pytest
    from wallaroo.tools.kafka_broker import Broker

    @pytest.fixture(scope="session")
    def kafka_broker(tmp_path_factory):
        b = Broker()
        b.start(tmp_path_factory.mktemp("kafka"))
        yield b
        b.stop()

    def test_roundtrip(kafka_broker):
        kafka_broker.create_topic("t", partitions=2)
        ...  # use kafka_broker.bootstrap as bootstrap.servers
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.metadata
import importlib.resources
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Union

__all__ = ["Broker", "BrokerError", "find_broker_binary"]

# The line announcing the Kafka listener, e.g. "  kafka          127.0.0.1:44631".
_PORT_LINE = re.compile(rb"^\s*kafka\s+(\S+):(\d+)\s*$", re.MULTILINE)

_BINARY_NAMES = ("noida-db.exe", "noida-db") if os.name == "nt" else ("noida-db",)


class BrokerError(RuntimeError):
    """The broker could not be found, started, or stopped."""


def _is_native_executable(path: Path) -> bool:
    """True for a real binary (ELF / Mach-O / PE), False for a '#!' script."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf") or head[:2] == b"MZ"


def find_broker_binary() -> Path:
    """Locate the broker binary inside the installed ``noida-db`` package.

    Order: ``$NOIDA_DB_BIN`` if set; the file next to the ``noida_db`` Python
    package; otherwise any file of the ``noida-db`` distribution (its RECORD)
    named ``noida-db`` that is a native binary -- which skips the console
    script ``bin/noida-db``, a Python wrapper.  Nothing depends on the
    version number, so an upgrade of noida-db keeps working as long as the
    binary still ships inside the package.
    """
    override = os.environ.get("NOIDA_DB_BIN")
    if override:
        p = Path(override)
        if not p.is_file():
            raise BrokerError(f"NOIDA_DB_BIN={override!r} is not a file")
        return p

    candidates = []
    try:
        pkg = importlib.resources.files("noida_db")
        candidates += [Path(str(pkg.joinpath(n))) for n in _BINARY_NAMES]
    except ModuleNotFoundError:
        pass
    try:
        for f in importlib.metadata.files("noida-db") or ():
            if f.name in _BINARY_NAMES:
                candidates.append(Path(f.locate()).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass

    for p in candidates:
        if p.is_file() and _is_native_executable(p):
            if not os.access(p, os.X_OK):
                # The wheel installs it 0755; the package's own wrapper
                # chmods it too, so do the same if the bit got lost.
                p.chmod(p.stat().st_mode | 0o111)
            return p
    raise BrokerError(
        "noida-db broker binary not found; install it with `pip install noida-db` "
        f"(looked at: {[str(c) for c in candidates] or 'no noida-db package'})"
    )


# prctl() resolved once in the parent: the pre-exec hook below runs in the
# forked child, where loading a library (dlopen) could deadlock if another
# thread (e.g. a librdkafka thread) held the loader lock at fork time.
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def _set_parent_death_signal() -> None:
    """Run in the child before exec: ask Linux to SIGTERM the broker if the
    process that started it dies (e.g. pytest killed), so no orphan broker
    outlives a crashed test run.  SIGTERM still lets it save its data.
    Note: Linux ties this to the *thread* that forked, so start the broker
    from a thread that lives as long as the broker (the main thread)."""
    PR_SET_PDEATHSIG = 1
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class Broker:
    """One noida-db Kafka broker process, started on a free port.

    ``start(data_dir)`` returns the bootstrap address "127.0.0.1:PORT";
    ``stop()`` sends SIGTERM and waits; the object is a context manager.
    If no ``data_dir`` is given a temporary one is made and deleted on stop.
    """

    def __init__(self, binary: Union[str, Path, None] = None, *,
                 start_timeout: float = 15.0, stop_timeout: float = 10.0,
                 die_with_parent: bool = True) -> None:
        self.binary = Path(binary) if binary else find_broker_binary()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent and _prctl is not None
        self.proc: Optional[subprocess.Popen] = None
        self.data_dir: Optional[Path] = None
        self.log_path: Optional[Path] = None
        self.bootstrap: Optional[str] = None
        self.port: Optional[int] = None
        self._tmp_dir: Optional[str] = None
        self._log_file = None

    # ------------------------------------------------------------------ start
    def start(self, data_dir: Union[str, Path, None] = None) -> str:
        """Start the broker; return its bootstrap address "127.0.0.1:PORT".

        ``data_dir`` holds ``kafka.json`` (all topics, records and committed
        offsets); reuse a directory to keep data across restarts.  The
        broker's stdout+stderr go to ``<data_dir>.broker.log`` next to it
        (a file, not a pipe, so a chatty broker can never block on a full
        pipe).  Raises BrokerError if the port line does not appear within
        ``start_timeout`` seconds or the process exits first.
        """
        if self.proc is not None:
            raise BrokerError(f"broker already running (pid {self.proc.pid})")
        if data_dir is None:
            self._tmp_dir = tempfile.mkdtemp(prefix="noida-kafka-")
            data_dir = Path(self._tmp_dir) / "data"
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".broker.log")
        self._log_file = open(self.log_path, "ab")
        log_start = self._log_file.tell()

        cmd = [str(self.binary), "start", "--data-dir", str(self.data_dir),
               "--host", "127.0.0.1", "--only", "kafka", "--kafka-port", "0"]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, close_fds=True,
            preexec_fn=_set_parent_death_signal if self.die_with_parent else None)
        atexit.register(self._atexit_stop)

        # Wait for the "kafka  HOST:PORT" line (normally < 10 ms).
        deadline = time.monotonic() + self.start_timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(log_start)
                m = _PORT_LINE.search(f.read())
            if m:
                self.port = int(m.group(2))
                break
            if self.proc.poll() is not None:
                msg = (f"broker exited with status {self.proc.returncode} before printing "
                       f"its port; command: {cmd}\n{self._log_tail()}")
                self._cleanup_after_exit()
                raise BrokerError(msg)
            if time.monotonic() > deadline:
                msg = (f"broker printed no port within {self.start_timeout}s; "
                       f"command: {cmd}\n{self._log_tail()}")
                self._terminate_quietly()
                raise BrokerError(msg)
            time.sleep(0.01)

        # The line is printed after the listener is bound; confirm anyway.
        self._wait_for_tcp(deadline)
        self.bootstrap = f"127.0.0.1:{self.port}"
        return self.bootstrap

    def _wait_for_tcp(self, deadline: float) -> None:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    msg = f"port {self.port} not accepting connections\n{self._log_tail()}"
                    self._terminate_quietly()
                    raise BrokerError(msg)
                time.sleep(0.02)

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """SIGTERM the broker and wait up to ``stop_timeout`` seconds.

        SIGTERM is a clean shutdown: the broker writes kafka.json and exits 0
        (in ~0.1 s).  If it is still running after the timeout this raises
        BrokerError and leaves it running (no SIGKILL: that can lose the
        last second of data); the message says which PID to look at.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                raise BrokerError(
                    f"broker pid {self.proc.pid} did not exit within {self.stop_timeout}s "
                    f"of SIGTERM; it is still running (data dir {self.data_dir})\n"
                    f"{self._log_tail()}") from None
        rc = self.proc.returncode
        tail = self._log_tail() if rc not in (0, -signal.SIGTERM) else ""
        self._cleanup_after_exit()
        if tail:
            raise BrokerError(f"broker exited with status {rc}\n{tail}")

    def _cleanup_after_exit(self) -> None:
        atexit.unregister(self._atexit_stop)
        self.proc = None
        self.bootstrap = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        if self._tmp_dir:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def _terminate_quietly(self) -> None:
        try:
            self.stop()
        except BrokerError:
            pass

    def _atexit_stop(self) -> None:
        self._terminate_quietly()

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return "broker log (" + str(self.log_path) + "):\n" + \
                self.log_path.read_bytes()[-n:].decode(errors="replace")
        except (OSError, AttributeError):
            return "(no broker log)"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "Broker":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ admin
    def create_topic(self, name: str, partitions: int = 1, *, timeout: float = 10.0,
                     exist_ok: bool = False, config: Optional[dict] = None) -> None:
        """Create a topic and wait until metadata shows all its partitions."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        if not self.bootstrap:
            raise BrokerError("broker not started")
        # allow.auto.create.topics=False: the AdminClient (a producer-type handle)
        # defaults to True, and noida-db then auto-creates any topic named in a
        # metadata request -- list_topics(topic=X) below would create X itself.
        admin = AdminClient({"bootstrap.servers": self.bootstrap,
                             "allow.auto.create.topics": False})
        fut = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1,
                      config=config or {})],
            operation_timeout=timeout, request_timeout=timeout)[name]
        try:
            fut.result(timeout)
        except KafkaException as e:
            if not (exist_ok and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
        deadline = time.monotonic() + timeout
        while True:
            md = admin.list_topics(topic=name, timeout=timeout)
            t = md.topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions:
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"topic {name!r} not visible with {partitions} partitions "
                                  f"after {timeout}s (metadata: {t!r})")
            time.sleep(0.05)


if __name__ == "__main__":
    # Smoke test: python broker.py
    with Broker() as b:
        print("binary   ", b.binary)
        print("pid      ", b.pid)
        print("bootstrap", b.bootstrap)
        b.create_topic("smoke", partitions=3)
        print("created topic 'smoke' with 3 partitions")
    print("stopped")


# -- helpers for the tests ---------------------------------------------------
def produce_all(bootstrap: str, topic: str, values, keys=None, partition=None) -> None:
    """Produce every value (with its key), and wait until all are delivered."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "linger.ms": 5})
    failed = []
    for i, v in enumerate(values):
        k = None if keys is None else keys[i]
        kw = {} if partition is None else {"partition": partition}
        while True:
            try:
                p.produce(topic, v, k, on_delivery=lambda e, m: e and failed.append(e),
                          **kw)
                break
            except BufferError:
                p.poll(0.05)
    left = p.flush(30)
    if left or failed:
        raise BrokerError(f"{left} records not delivered, errors {failed[:3]}")


def read_all(bootstrap: str, topic: str, partitions: int, count: int,
             timeout: float = 30.0, settle: float = 0.5,
             isolation: str = "read_committed") -> list:
    """Every record of the topic from the start, as (key, value, partition),
    once at least ``count`` arrived (then ``settle`` more seconds for any
    beyond) or after ``timeout``."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time()}",
                  "enable.auto.commit": False, "isolation.level": isolation})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout
    settled = None
    try:
        while time.monotonic() < deadline:
            if settled is None and len(out) >= count:
                settled = time.monotonic() + settle
            if settled is not None and time.monotonic() > settled:
                break
            for m in c.consume(1000, 0.1):
                if m.error() is None:
                    out.append((m.key(), m.value(), m.partition()))
    finally:
        c.close()
    return out
