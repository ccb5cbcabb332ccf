"""``wallaroo run``: load the application, open its store, run the worker,
and turn what went wrong into one clear log line and an exit code."""

from __future__ import annotations

import sqlite3

import trio

from .._errors import WallarooParameterError
from ..recovery.errors import StoreError
from ..recovery.sqlite_store import SQLiteStore
from ..recovery.store import MemoryStore
from . import logs
from .loader import ApplicationLoadError, load_application
from ..connectors.auth import AuthError, load_secret
from .cluster_side import ClusterConfig, grown_membership
from ..recovery.moves import is_retired
from .formation import (FormationError, Retired, check_saved, grow, grow_live,
                        initialize, join, saved_membership)
from .host_live_shrink import read_leaving, retire
from .live_moves import LiveMoveError
from .host_rescale import read_plan_file
from .commit_path import CommitFailed
from .worker import Worker, WorkerOptions

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
# stopped cleanly, but accepted messages or outputs were dropped (no
# --resilience-dir and the drain timed out)
EXIT_LOST = 3


def run_worker(app: str, args: list[str], *, name: str = "initializer",
               resilience_dir: str | None = None, synchronous: str = "normal",
               log_level: str = "info", cluster: dict | None = None,
               profile_dir: str | None = None, **options) -> int:
    """``options``: fields of ``WorkerOptions``; ``cluster``: how this
    worker belongs to a cluster (``cluster_setup``), or None;
    ``profile_dir``: run under cProfile, ``<profile_dir>/<name>.prof``."""
    if profile_dir is None:
        return _run_worker(app, args, name=name, resilience_dir=resilience_dir,
                           synchronous=synchronous, log_level=log_level,
                           cluster=cluster, **options)
    import cProfile
    import os
    os.makedirs(profile_dir, exist_ok=True)
    prof = cProfile.Profile()
    prof.enable()
    try:
        return _run_worker(app, args, name=name, resilience_dir=resilience_dir,
                           synchronous=synchronous, log_level=log_level,
                           cluster=cluster, **options)
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(profile_dir, f"{name}.prof"))


def _run_worker(app: str, args: list[str], *, name: str, resilience_dir: str | None,
                synchronous: str, log_level: str, cluster: dict | None,
                **options) -> int:
    log = logs.setup(name, log_level)
    try:
        spec = load_application(app, args)
    except (ApplicationLoadError, WallarooParameterError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    store = (SQLiteStore(resilience_dir, name, synchronous)
             if resilience_dir is not None else MemoryStore())
    where = f" with resilience in {store.path}" if resilience_dir is not None else \
        " without resilience (state is lost when the process stops)"
    log.info("starting application %r%s", spec.name, where)
    holder: list[Worker] = []
    after: list[str] = []  # several hosts' rescale: "exec" or "retired"
    several = cluster is not None and cluster["kind"] != "supervised" \
        and resilience_dir is not None

    async def main():
        config = None
        if several and read_plan_file(resilience_dir, name) is not None:
            after.append(await _move(cluster, name, resilience_dir, log))
            return
        try:
            leaving = read_leaving(resilience_dir, name) if several else None
        except LiveMoveError as e:
            raise _ConfigError(str(e)) from None
        if leaving is not None and "membership" in leaving:
            after.append("leave")  # every other member dropped it already
            return
        if cluster is not None:
            try:
                config = await cluster_setup(cluster, name, resilience_dir, log)
            except Retired:
                log.info("worker %s left its cluster in a rescale (retired); "
                         "it only delivers what it still holds", name)
                after.append("retired")
                return
            if config is None:  # a joiner's grow was accepted
                after.append(await _move(cluster, name, resilience_dir, log))
                return
            if leaving is not None:  # leaving while the cluster runs: no sources
                log.info("leaving the cluster while it runs (%s stay): started "
                         "again with no sources", ", ".join(leaving["members"]))
                config.drain_only = True
        try:
            worker = Worker(spec, store, WorkerOptions(name=name, cluster=config,
                                                       **options), log)
        except ValueError as e:
            raise _ConfigError(str(e)) from None
        holder.append(worker)
        await worker.run()
        if several and read_plan_file(resilience_dir, name) is not None:
            after.append(await _move(cluster, name, resilience_dir, log))
        elif worker.cluster is not None and worker.cluster.rescaler is not None \
                and worker.cluster.rescaler.after:
            after.append(worker.cluster.rescaler.after)

    try:
        trio.run(main)
    except BaseException as e:  # noqa: BLE001 - reported, then exit code
        leaf = _leaf(e)
        if isinstance(leaf, KeyboardInterrupt):
            log.info("interrupted")
            return EXIT_OK
        if isinstance(leaf, (_ConfigError, FormationError, AuthError)):
            log.error("%s", leaf)
            return EXIT_CONFIG
        if isinstance(leaf, (StoreError, CommitFailed, OSError)):
            log.error("%s", leaf)
            return EXIT_RUNTIME
        log.exception("worker failed: %s: %s", type(leaf).__name__, leaf,
                      exc_info=leaf)
        return EXIT_RUNTIME
    if after == ["exec"]:
        log.info("rescale done: starting again with the same command line")
        exec_again()
    if after == ["leave"]:
        try:
            if not retire(resilience_dir, name, log):
                return EXIT_RUNTIME
        except (StoreError, OSError, LiveMoveError, sqlite3.Error) as e:
            log.error("leaving: cannot retire %s: %s", name, e)
            return EXIT_RUNTIME
        after = ["retired"]
    if after == ["retired"]:
        return _deliver_retired(spec, resilience_dir, name, synchronous, log,
                                options)
    lost = holder and holder[0].stop_report.lost
    return EXIT_LOST if lost and not store.durable else EXIT_OK


def exec_again() -> None:
    """This process again, with its command line (the same pid)."""
    import logging
    import os
    import sys
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "wallaroo.cli", *sys.argv[1:]])


def _deliver_retired(spec, resilience_dir: str, name: str, synchronous: str, log,
                     options: dict) -> int:
    """A worker that left its cluster: deliver what its database still
    holds for the sinks, then stop."""
    from ..recovery.moves import undelivered_outputs
    if not undelivered_outputs(resilience_dir, name):
        log.info("retired: every output this worker held is delivered")
        return EXIT_OK
    store = SQLiteStore(resilience_dir, name, synchronous)
    worker = Worker(spec, store, WorkerOptions(
        name=name, **{**options, "deliver_only": True}), log)
    try:
        trio.run(worker.run)
    except BaseException as e:  # noqa: BLE001 - reported, then exit code
        log.error("retired worker %s: delivering its outputs failed: %s", name,
                  _leaf(e))
        return EXIT_RUNTIME
    return EXIT_OK


async def _move(c: dict, name: str, resilience_dir: str, log) -> str:
    from .move_mode import move_mode
    control = c["control"] if c["kind"] == "initializer" else c["my_control"]
    return await move_mode(resilience_dir, name, load_secret(c["secret_file"]),
                           control, log)


class _ConfigError(Exception):
    pass


async def cluster_setup(c: dict, name: str, resilience_dir: str | None,
                        log) -> ClusterConfig | None:
    """The cluster config of this worker: from the supervisor (one host),
    or formed (several hosts; or as saved in its database).  None: a
    joiner (``--join``) whose grow was accepted: it waits in move mode."""
    secret = load_secret(c["secret_file"])
    if c["kind"] == "supervised":
        return ClusterConfig(members=c["members"], secret=secret,
                             supervisor_fd=c["supervisor_fd"],
                             peer_outbox_max=c["peer_outbox_max"],
                             control_bind=("127.0.0.1", 0),
                             drain_only=c.get("drain_only", False),
                             membership=grown_membership(resilience_dir,
                                                         c["members"]))
    if c["kind"] == "initializer":
        control, data = c["control"], c["data"]
    else:
        control, data = c["my_control"], c["my_data"]
    control_text, data_text = _text(control), _text(data)
    saved = saved_membership(resilience_dir, name)
    if saved is not None and name not in saved["members"] \
            and is_retired(resilience_dir, name):
        raise Retired(name)
    if saved is not None:
        check_saved(saved, name, control_text, data_text, c.get("worker_count"))
        log.info("rejoining the cluster of %s", ", ".join(saved["members"]))
        membership = saved
    elif c["kind"] == "initializer":
        membership = await initialize(control, name, control_text, data_text,
                                      c["worker_count"], secret, log)
    elif c["kind"] == "joiner" and c.get("live"):
        membership = await grow_live(c["join"], name, control_text, data_text,
                                     secret, resilience_dir, log)
    elif c["kind"] == "joiner":
        await grow(c["join"], name, control_text, data_text, secret,
                   resilience_dir, log)
        return None
    else:
        membership = await join(c["initializer"], name, control_text, data_text,
                                secret, log)
    addresses = membership["addresses"]
    return ClusterConfig(
        members=membership["members"], secret=secret, data_bind=data,
        control_bind=control, key_groups=membership["key_groups"],
        peer_outbox_max=c["peer_outbox_max"], addresses=addresses,
        peer_addresses={n: _split(a["data"]) for n, a in addresses.items()
                        if n != name},
        # a live joiner starts from the grown membership (its map of owners)
        membership=membership if saved is None and c["kind"] == "joiner" else None)


def _text(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _leaf(e: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while getattr(e, "exceptions", None):
        e = e.exceptions[0]
    return e
