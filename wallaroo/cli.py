"""The ``wallaroo`` command: run applications, send to sources, receive from
sinks, inspect resilience directories."""

from __future__ import annotations

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
@click.option("--checkpoint-max", type=click.IntRange(min=1), default=1000,
              show_default=True, metavar="N",
              help="At most N checkpoint snapshots per commit (keeps the loop "
                   "from stalling on a large state).")
@click.option("--max-frame-size", type=click.IntRange(min=1), default=16 * 1024 * 1024,
              show_default=True, metavar="BYTES",
              help="A frame header announcing more closes that connection.")
@click.option("--drain-timeout", type=click.FloatRange(min=0.0), default=10.0,
              show_default=True, metavar="SECONDS",
              help="On SIGTERM/SIGINT, how long to finish and deliver what is "
                   "in flight.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"],
                                               case_sensitive=False),
              default="info", show_default=True)
@click.argument("app_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx, app, in_addrs, out_addrs, name, resilience_dir, application_module,
        synchronous, checkpoint_interval, checkpoint_max, max_frame_size,
        drain_timeout, log_level, app_args):
    """Run the application APP (a .py file, or an importable module).

    Every argument after `run` is passed, in order, to the application's
    application_setup(args), APP first; options the engine does not know are
    left to the application.  The worker listens on the addresses of the
    application's source configs, connects to those of its sink configs, and
    logs a line starting with `ready` once its sources accept connections.
    SIGTERM or SIGINT: stop reading, deliver what is in flight, exit 0.

    \b
    Example:
      wallaroo run examples/alphabet_partitioned/alphabet_partitioned.py \\
          --in 127.0.0.1:7010 --out 127.0.0.1:7002 --resilience-dir ./state
    """
    from .runtime.runner import run_worker
    target = application_module or app
    if not target:
        raise click.UsageError("give the application: wallaroo run APP.py "
                               "[options] (or --application-module MODULE)")
    code = run_worker(target, ctx.meta["raw_args"], name=name,
                      resilience_dir=resilience_dir, synchronous=synchronous,
                      checkpoint_interval=checkpoint_interval,
                      checkpoint_max=checkpoint_max, max_frame=max_frame_size,
                      drain_timeout=drain_timeout, log_level=log_level)
    sys.exit(code)


def main() -> None:
    cli(prog_name="wallaroo")


if __name__ == "__main__":  # pragma: no cover
    main()
