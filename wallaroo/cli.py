"""The ``wallaroo`` command: run applications, send to sources, receive from
sinks, inspect resilience directories."""

from __future__ import annotations

import signal
import sys

import click

from . import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="wallaroo")
def cli():
    """Wallaroo for Python 3: resilient stream processing.

    \b
    Example (three terminals):
      wallaroo receive --listen 127.0.0.1:7002 --framing lines --format text
      wallaroo run examples/word_count/word_count.py \\
          --in 127.0.0.1:7010 --out 127.0.0.1:7002 --resilience-dir /tmp/wc
      wallaroo send 127.0.0.1:7010 --file examples/word_count/sample.txt
    """


class _RawArgsCommand(click.Command):
    """Keeps the arguments exactly as given: the application's
    ``application_setup(args)`` receives all of them, in order."""

    def parse_args(self, ctx, args):
        ctx.meta["raw_args"] = list(args)
        return super().parse_args(ctx, args)


@cli.command(cls=_RawArgsCommand, context_settings={
    **CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True,
    "allow_interspersed_args": True})
@click.argument("app", required=False)
@click.option("-i", "--in", "in_addrs", metavar="HOST:PORT[,...]",
              help="Source addresses, one per pipeline (read by the "
                   "application through wallaroo.tcp_parse_input_addrs).")
@click.option("-o", "--out", "out_addrs", metavar="HOST:PORT[,...]",
              help="Sink addresses, one per sink (wallaroo.tcp_parse_output_addrs).")
@click.option("--name", default="initializer", show_default=True,
              help="Worker name: names the log lines and the resilience files.")
@click.option("--resilience-dir", type=click.Path(file_okay=False),
              help="Keep a write-ahead log and snapshots here; a restarted "
                   "worker recovers from them exactly.")
@click.option("--application-module", metavar="MODULE",
              help="Import the application as this module (instead of APP).")
@click.option("--synchronous", type=click.Choice(["normal", "full"], case_sensitive=False),
              default="normal", show_default=True,
              help="SQLite durability: normal survives a process crash, full "
                   "also power loss (an fsync per commit).")
@click.option("--checkpoint-interval", type=click.FloatRange(min=0.0), default=1.0,
              show_default=True, metavar="SECONDS",
              help="Snapshot partitions dirty for longer than this, so replay "
                   "after a crash stays short.")
@click.option("--save-state-interval", type=click.FloatRange(min=0.0), default=0.05,
              show_default=True, metavar="SECONDS",
              help="A partition whose step returned save_state=True is "
                   "snapshotted within this time, at most once per interval "
                   "(0: in the commit of every batch that asked, as many "
                   "snapshots as batches).  Replay after a crash rebuilds "
                   "what came after; nothing is lost either way.")
@click.option("--checkpoint-max", type=click.IntRange(min=1), default=1000,
              show_default=True, metavar="N",
              help="At most N checkpoint snapshots per commit (keeps the loop "
                   "from stalling on a large state).")
@click.option("--state-cache", type=click.IntRange(min=1), default=None,
              metavar="N",
              help="Keep at most N state partitions in memory (default: all); "
                   "the least recently used are snapshotted and dropped at a "
                   "batch boundary and loaded back from the resilience "
                   "directory when a message needs them.  Needs "
                   "--resilience-dir.  Example: --state-cache 100000")
@click.option("--max-batch", type=click.IntRange(min=1), default=10000,
              show_default=True, metavar="N",
              help="At most N messages per batch (bounds how long one batch "
                   "holds the loop; larger batches commit less often).")
@click.option("--max-batch-time", type=click.FloatRange(min=0.001), default=0.025,
              show_default=True, metavar="SECONDS",
              help="A batch stops taking messages after this long, so a slow "
                   "application never holds the worker (handshakes, ACKs, "
                   "signals) for long.")
# the default is runtime/commit_path.py's INLINE_MAX (not imported: it brings trio)
@click.option("--inline-commit-max", type=click.IntRange(min=0), default=500,
              show_default=True, metavar="N",
              help="With --resilience-dir: a batch of at most N messages (and "
                   "little snapshot data) commits on the event loop's thread, "
                   "larger ones in the commit thread while the next batch is "
                   "computed.  Under light load that saves a small batch the "
                   "thread hand-off and waiting for the GIL (lower latency); "
                   "0: every batch in the commit thread.")
@click.option("--max-frame-size", type=click.IntRange(min=1, max=512 * 1024 * 1024),
              default=16 * 1024 * 1024, show_default=True, metavar="BYTES",
              help="A frame header announcing more closes that connection.")
@click.option("--max-connections", type=click.IntRange(min=1), metavar="N",
              help="Serve at most N source connections at once; more are "
                   "closed (logged).  Default: 1000, or less when `ulimit -n` "
                   "is lower.")
@click.option("--handshake-timeout", type=click.FloatRange(min=0, min_open=True),
              default=10.0, show_default=True, metavar="SECONDS",
              help="A connection that has sent its first byte must complete "
                   "the resumable handshake (or show it is plain) within this.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS",
              help="Close source connections that send nothing for this long "
                   "(default: never).")
@click.option("--resumable-sinks", is_flag=True,
              help="Every TCP sink speaks the resumable sink protocol "
                   "(WALLAROO-OUT / HAVE / ACK): outputs stay in the outbox "
                   "until the receiver acknowledges them, and each arrives "
                   "exactly once across crashes of either side.  The receiver "
                   "must speak it too (wallaroo receive --resumable).")
@click.option("--kafka-transactional-sinks", "kafka_transactions", is_flag=True,
              help="Every Kafka sink produces with a transactional producer "
                   "(one per worker and sink, a stable transactional.id): "
                   "each run of committed outputs is one Kafka transaction "
                   "that also commits the sink's position, so consumers "
                   "reading with isolation.level=read_committed see every "
                   "output exactly once across crashes.  Without it, Kafka "
                   "sinks deliver at least once.")
@click.option("--metrics", "metrics_addr", metavar="HOST:PORT",
              help="Serve metrics in Prometheus' text format at "
                   "http://HOST:PORT/metrics and a live page at http://HOST:PORT/ "
                   "(port 0: any free port, named by the ready line's "
                   "metrics=).  With --workers the supervisor serves the whole "
                   "cluster there (series labelled worker=) and each worker its "
                   "own address on HOST, listed in cluster.json.")
@click.option("--kafka-option", "kafka_options", multiple=True, metavar="KEY=VALUE",
              help="A librdkafka setting for every Kafka client of the worker "
                   "(repeatable), applied after the engine's own: e.g. "
                   "--kafka-option security.protocol=SASL_SSL --kafka-option "
                   "sasl.mechanism=PLAIN --kafka-option sasl.username=app "
                   "--kafka-option sasl.password=secret.")
@click.option("--sink-outbox-max", type=click.IntRange(min=1), default=1 << 30,
              show_default=True, metavar="BYTES",
              help="With --resilience-dir: undelivered outputs one sink may "
                   "hold (on disk) before the sources stop reading.")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="One host: run N workers (initializer, worker-1 ...) under a "
                   "supervisor that shares the source addresses among them; keys "
                   "are spread over them by key group.")
@click.option("--restart-delay", type=click.FloatRange(min=0), default=0.5,
              show_default=True, metavar="SECONDS",
              help="With --workers: wait this long before restarting a worker "
                   "that died.")
@click.option("--cluster-initializer", is_flag=True,
              help="Several hosts: this worker forms the cluster (with "
                   "--worker-count, --control, --data).")
@click.option("--worker-count", type=click.IntRange(min=1), metavar="N",
              help="Several hosts, initializer: how many workers the cluster has.")
@click.option("--control", "control_addr", metavar="HOST:PORT",
              help="Several hosts: the initializer's control address (on the "
                   "initializer: where it listens).")
@click.option("--data", "data_addr", metavar="HOST:PORT",
              help="Several hosts, initializer: where its data port listens.")
@click.option("--join", "join_addr", metavar="HOST:PORT",
              help="Several hosts: join a running cluster through any worker's "
                   "control address (with --name, --my-control, --my-data, "
                   "--resilience-dir); it grows by this worker, which takes its "
                   "share of the key groups with their state.")
@click.option("--live", "join_live", is_flag=True,
              help="With --join: join while the cluster runs.  The other "
                   "workers keep running (no drain, no restart); key groups "
                   "move to this worker with their state, a few at a time, "
                   "while every other group flows.  It owns no resumable stream "
                   "and reads no Kafka partition until a rescale without --live.")
@click.option("--my-control", metavar="HOST:PORT",
              help="Several hosts, other workers: where this one's control "
                   "port listens.")
@click.option("--my-data", metavar="HOST:PORT",
              help="Several hosts, other workers: where this one's data port "
                   "listens.")
@click.option("--cluster-secret-file", type=click.Path(dir_okay=False),
              metavar="FILE",
              help="The cluster's shared secret (required with --control); "
                   "peers prove they hold it before anything is deserialized.")
@click.option("--peer-outbox-max", type=click.IntRange(min=1), default=1 << 30,
              show_default=True, metavar="BYTES",
              help="In a cluster: messages for one other worker this one may "
                   "hold before its sources stop reading.")
@click.option("--cluster-members", hidden=True)
@click.option("--supervisor-fd", type=int, hidden=True)
@click.option("--rescale-drain", is_flag=True, hidden=True)
@click.option("--deliver-retired", is_flag=True, hidden=True)
@click.option("--forget-streams-after", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS",
              help="With --resilience-dir: forget resumable streams nobody has "
                   "used for this long (a client coming back then starts at "
                   "0).  Default: never.")
@click.option("--drain-timeout", type=click.FloatRange(min=0.0), default=10.0,
              show_default=True, metavar="SECONDS",
              help="On SIGTERM/SIGINT, how long to finish and deliver what is "
                   "in flight.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"],
                                               case_sensitive=False),
              default="info", show_default=True)
@click.option("--profile-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Diagnostics: run the worker under cProfile and write "
                   "DIR/<worker>.prof when it stops (with --workers, one per "
                   "worker); read it with `python -m pstats`.  Slows the worker.")
@click.argument("app_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx, app, in_addrs, out_addrs, name, resilience_dir, application_module,
        synchronous, checkpoint_interval, save_state_interval, checkpoint_max,
        state_cache, max_batch,
        max_batch_time, inline_commit_max,
        max_frame_size, max_connections, handshake_timeout, idle_timeout,
        resumable_sinks, kafka_transactions, metrics_addr, kafka_options,
        sink_outbox_max, workers,
        restart_delay,
        cluster_initializer, worker_count, control_addr, data_addr, join_addr,
        join_live, my_control, my_data, cluster_secret_file, peer_outbox_max,
        cluster_members, supervisor_fd, rescale_drain, deliver_retired, forget_streams_after,
        drain_timeout, log_level, profile_dir, app_args):
    """Run the application APP (a .py file, or an importable module).

    Every argument after `run` is passed, in order, to the application's
    application_setup(args), APP first; options the engine does not know are
    left to the application.  The worker listens on the addresses of the
    application's source configs, connects to those of its sink configs, and
    logs a line starting with `ready` once its sources accept connections.
    SIGTERM or SIGINT: stop reading, process and deliver what was read
    (until --drain-timeout), then exit 0.  What is still unprocessed then is
    logged for the next start with --resilience-dir; without it, it is
    dropped, the stop line says how many, and the exit status is 3.  A second
    signal ends the drain at once.  Exit 1: a runtime error (e.g. a damaged
    or locked resilience directory); 2: a bad application or option.

    \b
    Example:
      wallaroo run examples/alphabet_partitioned/alphabet_partitioned.py \\
          --in 127.0.0.1:7010 --out 127.0.0.1:7002 --resilience-dir ./state

    \b
    Two workers on this host (one shared source address; docs/cluster.md):
      wallaroo run examples/word_count/word_count.py --workers 2 \\
          --in 127.0.0.1:7010 --out 127.0.0.1:7002 --resilience-dir ./state

    \b
    Three hosts (the same secret file on each):
      wallaroo run APP.py --cluster-initializer --worker-count 3 \\
          --control 10.0.0.1:7100 --data 10.0.0.1:7101 --in 10.0.0.1:7010 \\
          --out 10.0.0.9:7002 --resilience-dir ./state --cluster-secret-file secret
      wallaroo run APP.py --control 10.0.0.1:7100 --name worker-1 \\
          --my-control 10.0.0.2:7100 --my-data 10.0.0.2:7101 --in 10.0.0.2:7010 \\
          --out 10.0.0.9:7002 --resilience-dir ./state --cluster-secret-file secret

    \b
    A fourth host joins the running cluster (docs/cluster.md, "Rescaling"):
      wallaroo run APP.py --join 10.0.0.1:7100 --name worker-3 \\
          --my-control 10.0.0.4:7100 --my-data 10.0.0.4:7101 --in 10.0.0.4:7010 \\
          --out 10.0.0.9:7002 --resilience-dir ./state --cluster-secret-file secret
    (add --live to join without stopping the others)
    """
    from .runtime.runner import run_worker
    target = application_module or app
    if not target:
        raise click.UsageError("give the application: wallaroo run APP.py "
                               "[options] (or --application-module MODULE)")
    if resilience_dir is not None and not resilience_dir.strip():
        raise click.BadParameter("the directory name is empty (to run without "
                                 "resilience, leave the option out)",
                                 param_hint="--resilience-dir")
    if state_cache is not None and resilience_dir is None:
        raise click.BadParameter("evicted partitions live in the resilience "
                                 "directory: give --resilience-dir too",
                                 param_hint="--state-cache")
    from .connectors.tcp_source import default_max_connections
    metrics = _address_option(metrics_addr, "--metrics")
    if workers is not None:
        if control_addr or cluster_initializer or join_addr or \
                supervisor_fd is not None:
            raise click.UsageError("--workers runs a cluster on this host; "
                                   "--control / --cluster-initializer are for "
                                   "several hosts: give one or the other")
        from .runtime.supervisor import run_supervisor
        sys.exit(run_supervisor(target, ctx.meta["raw_args"], workers=workers,
                                resilience_dir=resilience_dir,
                                restart_delay=restart_delay, log_level=log_level,
                                metrics=metrics))
    cluster = _cluster_args(cluster_initializer, worker_count, control_addr,
                            data_addr, my_control, my_data, cluster_secret_file,
                            cluster_members, supervisor_fd, peer_outbox_max, name,
                            join_addr, resilience_dir)
    if join_live:
        if cluster is None or cluster["kind"] != "joiner":
            raise click.UsageError("--live joins a running cluster without "
                                   "stopping it: give it with --join")
        cluster["live"] = True
    if rescale_drain:
        if cluster is None or cluster["kind"] != "supervised":
            raise click.UsageError("--rescale-drain is the supervisor's")
        cluster["drain_only"] = True
    code = run_worker(target, ctx.meta["raw_args"], name=name, cluster=cluster,
                      resilience_dir=resilience_dir, synchronous=synchronous,
                      checkpoint_interval=checkpoint_interval,
                      save_state_interval=save_state_interval,
                      checkpoint_max=checkpoint_max, state_cache=state_cache,
                      max_batch=max_batch,
                      max_batch_time=max_batch_time, max_frame=max_frame_size,
                      inline_commit_max=inline_commit_max,
                      max_connections=max_connections or default_max_connections(),
                      handshake_timeout=handshake_timeout, idle_timeout=idle_timeout,
                      forget_streams_after=forget_streams_after,
                      resumable_sinks=resumable_sinks,
                      kafka_transactions=kafka_transactions,
                      kafka_options=_kafka_options(kafka_options),
                      metrics=metrics,
                      sink_outbox_max=sink_outbox_max,
                      drain_timeout=drain_timeout, log_level=log_level,
                      profile_dir=profile_dir, deliver_only=deliver_retired)
    sys.exit(code)


def _kafka_options(items) -> dict:
    from .connectors.kafka_client import parse_options
    try:
        return parse_options(items)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--kafka-option")


def _address_option(text: str | None, flag: str):
    from .tools.common import parse_address
    if text is None:
        return None
    try:
        return parse_address(text, flag)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None


def _cluster_args(initializer, worker_count, control, data, my_control, my_data,
                  secret_file, members, supervisor_fd, peer_outbox_max, name,
                  join=None, resilience_dir=None):
    """How this worker belongs to a cluster (None: on its own)."""
    if supervisor_fd is not None:  # started by `--workers`' supervisor
        return {"kind": "supervised", "members": members.split(","),
                "secret_file": secret_file, "supervisor_fd": supervisor_fd,
                "peer_outbox_max": peer_outbox_max}
    if join is not None:
        if initializer or control or worker_count or data:
            raise click.UsageError("--join grows a running cluster; --control, "
                                   "--cluster-initializer, --worker-count and "
                                   "--data form a new one: give one or the other")
        if not secret_file:
            raise click.UsageError("--join needs --cluster-secret-file FILE")
        if resilience_dir is None:
            raise click.UsageError("--join needs --resilience-dir: the new worker "
                                   "takes its share of the state")
        return {"kind": "joiner", "join": _address_option(join, "--join"),
                **_own_ports(name, my_control, my_data, "--join"),
                "secret_file": secret_file, "peer_outbox_max": peer_outbox_max}
    if not (initializer or control):
        for flag, v in (("--worker-count", worker_count), ("--data", data),
                        ("--my-control", my_control), ("--my-data", my_data)):
            if v is not None:
                raise click.UsageError(f"{flag} is for a cluster over several "
                                       f"hosts: give --control too")
        return None
    if not secret_file:
        raise click.UsageError("--cluster-secret-file FILE is required with "
                               "--control (the workers prove they hold the same "
                               "secret before anything is deserialized)")
    if initializer:
        if worker_count is None or control is None or data is None:
            raise click.UsageError("--cluster-initializer needs --worker-count N, "
                                   "--control HOST:PORT and --data HOST:PORT")
        return {"kind": "initializer", "worker_count": worker_count,
                "control": _address_option(control, "--control"),
                "data": _address_option(data, "--data"),
                "secret_file": secret_file, "peer_outbox_max": peer_outbox_max}
    return {"kind": "member", "initializer": _address_option(control, "--control"),
            **_own_ports(name, my_control, my_data, "--control"),
            "secret_file": secret_file, "peer_outbox_max": peer_outbox_max}


def _own_ports(name, my_control, my_data, through: str) -> dict:
    """A worker that joins (``through`` --control or --join): its own
    addresses, and a name of its own."""
    if my_control is None or my_data is None:
        raise click.UsageError(f"worker {name!r} joining through {through} needs "
                               f"--my-control HOST:PORT and --my-data HOST:PORT "
                               f"(where its own ports listen)")
    if name == "initializer":
        raise click.UsageError("a worker joining a cluster needs its own --name")
    return {"my_control": _address_option(my_control, "--my-control"),
            "my_data": _address_option(my_data, "--my-data")}


@cli.command(context_settings=CONTEXT)
@click.argument("address", metavar="HOST:PORT")
@click.option("--file", "file_path", type=click.Path(exists=True, dir_okay=False),
              help="Each line of this text file is one message (trailing \\n or "
                   "\\r\\n stripped), framed with a length header.")
@click.option("--frames", "frames_path", type=click.Path(exists=True, dir_okay=False),
              help="A file of already-framed messages (split with --header-fmt), "
                   "sent as they are.")
@click.option("--u64", "u64_count", type=click.IntRange(min=0), metavar="N",
              help="N messages with values --start .. --start+N-1, each payload "
                   "an 8-byte big-endian unsigned integer.")
@click.option("--start", type=click.IntRange(min=0), default=1, show_default=True,
              metavar="S", help="First value for --u64.")
@click.option("--header-fmt", default=">I", show_default=True, metavar="FMT",
              help="struct format of the frame length header.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="K", help="Send the whole input K times.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="MSGS",
              help="At most MSGS messages per second (default: unlimited).")
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True,
              metavar="N", help="Messages per socket write.")
@click.option("--resumable", "stream", metavar="STREAM",
              help="Use the resumable handshake with this stream name: resume "
                   "where the worker left off after a restart, and exit only "
                   "once every message is acknowledged (durable).")
@click.option("--connect-timeout", type=click.FloatRange(min=0), default=30.0,
              show_default=True, metavar="SECONDS",
              help="How long to keep retrying to (re)connect before giving up.")
@click.option("--quiet", is_flag=True,
              help="No progress bar or retry notices (the summary line and "
                   "errors are still printed).")
def send(address, file_path, frames_path, u64_count, start, header_fmt, repeat,
         rate, batch, stream, connect_timeout, quiet):
    """Send messages to a Wallaroo TCP source at HOST:PORT.

    Give exactly one input: --file, --frames or --u64.  Messages are framed
    ahead of time and written in batches.  With --resumable STREAM the sender
    survives worker restarts: it reconnects, asks the worker how many
    messages of STREAM it holds durably (RESUME n) and continues from there;
    it exits 0 once every message is acknowledged.  Progress is shown on
    stderr when it is a terminal; a summary line is always printed.  Exit 0
    on success, 1 on an error (nothing listening within --connect-timeout, a
    lost plain connection, an ERROR from the worker).

    \b
    Example:
      wallaroo send 127.0.0.1:7010 --file examples/word_count/sample.txt
      wallaroo send 127.0.0.1:7010 --u64 1000000 --resumable numbers --rate 50000
    """
    from .tools import ToolError
    from .tools import messages as msgs
    from .tools.common import header_struct, parse_address
    from .tools.sender import SendOptions, batch_for_rate, check_stream_name
    from .tools.sender import send as do_send
    given = [o for o, v in (("--file", file_path), ("--frames", frames_path),
                            ("--u64", u64_count)) if v is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one input: --file PATH, --frames PATH "
                               "or --u64 N" + (f" (got {', '.join(given)})"
                                               if given else ""))
    try:
        host, port = parse_address(address, "HOST:PORT")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="HOST:PORT") from None
    if port == 0:
        raise click.BadParameter(f"{address!r}: give the source's port (not 0)",
                                 param_hint="HOST:PORT")
    try:
        header_struct(header_fmt)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--header-fmt") from None
    if stream is not None:
        try:
            check_stream_name(stream)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--resumable") from None
    size = batch_for_rate(batch, rate)
    try:
        if file_path is not None:
            messages = msgs.from_lines(file_path, header_fmt, size, repeat)
        elif frames_path is not None:
            messages = msgs.from_frames(frames_path, header_fmt, size, repeat)
        else:
            messages = msgs.U64Messages(u64_count, start, header_fmt, size, repeat)
        stats = do_send(messages, SendOptions(host, port, rate=rate, stream=stream,
                                              connect_timeout=connect_timeout,
                                              quiet=quiet))
    except ToolError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted") from None
    click.echo(stats.summary(stream is not None), err=True)


@cli.command(context_settings=CONTEXT)
@click.option("--listen", required=True, metavar="HOST:PORT",
              help="Where sinks connect (port 0 picks a free port).  Any number "
                   "of connections, one after another or at once.")
@click.option("--output", "-o", default="-", show_default=True, metavar="PATH|-",
              help="Where to write (- is stdout); flushed as data arrives.  With "
                   "--resumable: a file, kept and continued across runs.")
@click.option("--resumable", is_flag=True,
              help="Speak the resumable sink protocol (workers run with "
                   "--resumable-sinks): keep every output exactly once in --output "
                   "FILE, fsynced before it is acknowledged, across crashes of "
                   "either side.")
@click.option("--framing", type=click.Choice(["raw", "length", "lines"]),
              default="raw", show_default=True,
              help="How to split what arrives into records: raw (a record is "
                   "whatever one read returned; with --resumable, one output), "
                   "length (a --header-fmt length header, then the payload) or "
                   "lines.")
@click.option("--header-fmt", default=">I", show_default=True, metavar="FMT",
              help="struct format of the length header for --framing length.")
@click.option("--format", "fmt", type=click.Choice(["raw", "text", "hex", "repr"]),
              default="raw", show_default=True,
              help="What is written per record: raw (its bytes exactly as "
                   "received, header or newline included), text (the payload "
                   "or line as UTF-8, plus a newline), hex or repr (of the "
                   "payload, one line per record).")
@click.option("--expect", type=click.IntRange(min=0), metavar="N",
              help="Exit once N records have been received (needs --framing "
                   "length or lines, or --resumable, where it counts the records "
                   "FILE holds, from all streams and earlier runs).")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS",
              help="Exit once this long passes without data, after something "
                   "arrived.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Exit after this long in all.")
@click.option("--max-record-size", type=click.IntRange(min=0),
              default=64 * 1024 * 1024, show_default=True, metavar="BYTES",
              help="A length header announcing more closes that connection "
                   "(its pending bytes count as dropped); with --resumable, an "
                   "output over it too, answered with ERROR.")
@click.option("--verbose", "-v", is_flag=True,
              help="A line on stderr per connection opened and closed.")
@click.option("--quiet", is_flag=True, help="No summary.")
def receive(listen, output, resumable, framing, header_fmt, fmt, expect, idle_timeout,
            timeout, max_record_size, verbose, quiet):
    """Listen where sinks connect and write what arrives.

    The first line on stderr is `listening on HOST:PORT`, with the real
    port.  Records are split per connection: a record still incomplete when
    its connection ends is dropped and counted, never written (after a
    worker restart the sink resends whole records on a new connection).
    Runs until --expect, --idle-timeout or --timeout is reached, or SIGTERM /
    SIGINT; then prints a summary on stderr (records, bytes, connections,
    incomplete records dropped) and exits 0.

    With --resumable (needs --output FILE) each worker sink connection says
    which stream it is; the receiver answers how many outputs of it FILE
    holds, gets the rest, and acknowledges them once FILE and its index
    (FILE.wallaroo-index: per-stream counts and FILE's durable length, with
    checksums) are fsynced, a group commit for all streams every few ms.
    Each output goes through --framing and --format as a plain sink's bytes
    would.  Restarted on the same FILE (after SIGKILL too), it truncates the
    torn tail and carries on: every output exactly once.  A FILE shorter
    than its index says, a damaged index, or other --framing/--format than
    FILE was written with are refused.  The summary adds the records FILE
    holds and the outputs per stream.

    \b
    Example:
      wallaroo receive --listen 127.0.0.1:7002 --framing lines --format text
      wallaroo receive --listen 127.0.0.1:0 --framing length --format hex \\
          --expect 1000 --output out.txt
      wallaroo receive --listen 127.0.0.1:7002 --resumable --output out.txt \\
          --framing length --format hex
    """
    from .tools import ToolError
    from .tools.common import header_struct, parse_address
    from .tools.receiver import ReceiveOptions
    from .tools.receiver import receive as do_receive
    try:
        host, port = parse_address(listen, "--listen")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--listen") from None
    if framing == "length":
        try:
            header_struct(header_fmt)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--header-fmt") from None
    if resumable and output == "-":
        raise click.UsageError("--resumable needs --output FILE (not stdout): the "
                               "file is truncated back to what was acknowledged after "
                               "a crash, which stdout cannot do")
    if expect is not None and framing == "raw" and not resumable:
        raise click.UsageError("--expect counts records, and --framing raw has "
                               "none: give --framing length or --framing lines "
                               "(or stop on --idle-timeout / --timeout)")
    opts = ReceiveOptions(host, port, framing=framing, header_fmt=header_fmt,
                          format=fmt, expect=expect, idle_timeout=idle_timeout,
                          timeout=timeout, max_record=max_record_size,
                          quiet=quiet, verbose=verbose)
    try:
        if resumable:
            from .tools.receive_resumable import receive_resumable
            receive_resumable(opts, output)
        else:
            do_receive(opts, output)
    except ToolError as e:
        raise click.ClickException(str(e)) from None


def _cluster_location(fn):
    """DIRECTORY, --control and --cluster-secret-file: where ``status`` and
    ``top`` find a running cluster."""
    fn = click.option("--cluster-secret-file", type=click.Path(dir_okay=False),
                      metavar="FILE", help="The cluster's secret (with --control, "
                      "or with the DIRECTORY of a worker on several hosts).")(fn)
    fn = click.option("--control", metavar="HOST:PORT",
                      help="Several hosts: any worker's control address.")(fn)
    return click.argument("directory", required=False,
                          type=click.Path(file_okay=False))(fn)


@cli.command(context_settings=CONTEXT)
@_cluster_location
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output (its shape: docs/cluster.md).")
def status(directory, control, cluster_secret_file, as_json):
    """Every worker of a running cluster: state, pid, restarts, key groups
    and partitions owned, age of its last commit, inbox, sink and channel
    backlogs.

    DIRECTORY is the cluster's --resilience-dir (or the directory the
    supervisor's ready line names as cluster_file=...); on several hosts,
    any worker's --resilience-dir with --cluster-secret-file, or any
    worker's --control address and the secret.

    \b
    Example:
      wallaroo status ./state
      wallaroo status --control 10.0.0.1:7100 --cluster-secret-file secret --json
    """
    from .tools import ToolError
    from .tools.status import render, status_from_control, status_from_dir
    from .connectors.auth import AuthError
    if (directory is None) == (control is None):
        raise click.UsageError("give DIRECTORY, or --control HOST:PORT with "
                               "--cluster-secret-file FILE")
    if control is not None and not cluster_secret_file:
        raise click.UsageError("--control needs --cluster-secret-file FILE")
    try:
        st = (status_from_dir(directory, cluster_secret_file) if directory is not None
              else status_from_control(control, cluster_secret_file))
    except (ToolError, AuthError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        import json
        click.echo(json.dumps(st, indent=2))
        return
    from rich.console import Console
    render(st, Console(width=None if sys.stdout.isatty() else 140))


@cli.command(context_settings=CONTEXT)
@_cluster_location
@click.option("--metrics", "metrics_addrs", metavar="HOST:PORT[,HOST:PORT...]",
              help="Read the workers' --metrics addresses instead.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0,
              show_default=True, metavar="SECONDS", help="Time between refreshes.")
@click.option("--iterations", type=click.IntRange(min=1), metavar="N",
              help="Stop after N refreshes (default: until Ctrl-C).")
def top(directory, control, cluster_secret_file, metrics_addrs, interval, iterations):
    """A live view of a running worker or cluster: per worker, messages per
    second in and out, failures, inbox, outbox and channel backlogs, the
    event loop's longest stall, and its state.  On a terminal the table
    refreshes in place; otherwise a table is printed per refresh.

    \b
    Examples:
      wallaroo top ./state                                   # a cluster's --resilience-dir
      wallaroo top --control 10.0.0.1:7100 --cluster-secret-file secret
      wallaroo top --metrics 127.0.0.1:9100 --interval 2     # a worker run with --metrics
    """
    from .tools import ToolError
    from .tools.status import status_from_control, status_from_dir
    from .tools.top import figures_from_metrics, figures_from_status, run_top
    from .connectors.auth import AuthError
    given = [x is not None for x in (directory, control, metrics_addrs)]
    if sum(given) != 1:
        raise click.UsageError("give DIRECTORY, --control HOST:PORT with "
                               "--cluster-secret-file FILE, or --metrics HOST:PORT")
    if control is not None and not cluster_secret_file:
        raise click.UsageError("--control needs --cluster-secret-file FILE")
    if metrics_addrs:
        addrs = [a.strip() for a in metrics_addrs.split(",") if a.strip()]
        fetch = lambda: figures_from_metrics(addrs)  # noqa: E731
        title = "workers at " + ", ".join(addrs)
    else:
        def fetch():
            try:
                st = (status_from_dir(directory, cluster_secret_file)
                      if directory is not None
                      else status_from_control(control, cluster_secret_file))
            except (ToolError, AuthError) as e:
                raise ToolError(str(e)) from None
            return figures_from_status(st)
        title = f"cluster in {directory}" if directory else f"cluster of {control}"
    from rich.console import Console
    console = Console(width=None if sys.stdout.isatty() else 140)

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)  # a polite stop, like Ctrl-C: exit 0
    try:
        run_top(fetch, interval, iterations, console, sys.stdout.isatty(), title)
    except ToolError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass


def main() -> None:
    cli(prog_name="wallaroo")


def _add_groups() -> None:
    from ._cluster_cli import cluster
    from ._recovery_cli import recovery
    cli.add_command(recovery)
    cli.add_command(cluster)


_add_groups()


if __name__ == "__main__":  # pragma: no cover
    main()
