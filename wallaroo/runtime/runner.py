"""``wallaroo run``: load the application, open its store, run the worker,
and turn what went wrong into one clear log line and an exit code."""

from __future__ import annotations

import trio

from .._errors import WallarooParameterError
from ..recovery.errors import StoreError
from ..recovery.sqlite_store import SQLiteStore
from ..recovery.store import MemoryStore
from . import logs
from .loader import ApplicationLoadError, load_application
from .worker import CommitFailed, Worker, WorkerOptions

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
# stopped cleanly, but accepted messages or outputs were dropped (no
# --resilience-dir and the drain timed out)
EXIT_LOST = 3


def run_worker(app: str, args: list[str], *, name: str = "initializer",
               resilience_dir: str | None = None, synchronous: str = "normal",
               log_level: str = "info", **options) -> int:
    """``options``: fields of ``WorkerOptions``."""
    log = logs.setup(name, log_level)
    try:
        spec = load_application(app, args)
    except (ApplicationLoadError, WallarooParameterError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    store = (SQLiteStore(resilience_dir, name, synchronous)
             if resilience_dir is not None else MemoryStore())
    opts = WorkerOptions(name=name, **options)
    try:
        worker = Worker(spec, store, opts, log)
    except ValueError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    where = f" with resilience in {store.path}" if resilience_dir is not None else \
        " without resilience (state is lost when the process stops)"
    log.info("starting application %r%s", spec.name, where)
    try:
        trio.run(worker.run)
    except BaseException as e:  # noqa: BLE001 - reported, then exit code
        leaf = _leaf(e)
        if isinstance(leaf, KeyboardInterrupt):
            log.info("interrupted")
            return EXIT_OK
        if isinstance(leaf, (StoreError, CommitFailed, OSError)):
            log.error("%s", leaf)
            return EXIT_RUNTIME
        log.exception("worker failed: %s: %s", type(leaf).__name__, leaf,
                      exc_info=leaf)
        return EXIT_RUNTIME
    return EXIT_LOST if worker.stop_report.lost and not store.durable else EXIT_OK


def _leaf(e: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while getattr(e, "exceptions", None):
        e = e.exceptions[0]
    return e
