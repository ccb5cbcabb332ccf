"""``wallaroo recovery``: look into resilience directories (what
``--resilience-dir`` keeps: one SQLite database per worker), and the few
repairs an operator decides on (``discard-outputs``, ``accept-rollback``,
``compact``).  See docs/operating.md and docs/resilience-files.md."""

from __future__ import annotations

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def recovery():
    """Look into resilience directories (what --resilience-dir keeps: one
    SQLite database per worker)."""


@recovery.command("inspect", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--worker", metavar="NAME", help="Only this worker's database.")
@click.option("--all", "show_all", is_flag=True, help="List every partition.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Partitions listed per worker (without --all).")
@click.option("--streams", "all_streams", is_flag=True,
              help="List every resumable stream (by default: how many, and the "
                   "ten seen last).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output (every stream, and every partition "
                   "unless --limit is given; partitions_total counts them).")
@click.pass_context
def recovery_inspect(ctx, directory, worker, show_all, limit, all_streams, as_json):
    """What DIRECTORY (a --resilience-dir) holds, per worker: partitions with
    their snapshot positions and sizes, the input-log and outbox backlog, and
    the resumable streams with their durable counts.

    Reads without taking the worker's lock, so it is safe on the directory of
    a running worker.  The files are plain SQLite: `sqlite-utils tables
    DIR/initializer.db --counts` works too.

    \b
    Example:
      wallaroo recovery inspect ./state
      wallaroo recovery inspect ./state --worker initializer --json
    """
    from .recovery.inspect import inspect_dir, to_json
    if show_all:
        limit = None
    elif as_json and ctx.get_parameter_source("limit") is not \
            click.core.ParameterSource.COMMANDLINE:
        limit = None  # --json lists every partition unless told otherwise
    try:
        infos = inspect_dir(directory, worker, limit)
    except (FileNotFoundError, OSError) as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:  # a damaged or foreign database
        raise click.ClickException(f"cannot read {directory}: {type(e).__name__}: {e}") from None
    if as_json:
        click.echo(to_json(infos))
        return
    from rich.console import Console
    from .tools.inspect_view import render
    render(infos, Console(), limit, all_streams)


@recovery.command("discard-outputs", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--worker", default="initializer", show_default=True, metavar="NAME")
@click.option("--sink", required=True, metavar="PIPELINE:POSITION|#ID",
              help="The sink whose undelivered outputs to drop: its pipeline "
                   "and its place among that pipeline's sinks (0 for the "
                   "first to_sink), as the refusal names it.")
def recovery_discard_outputs(directory, worker, sink):
    """Drop the undelivered outputs of one sink, on purpose.

    A worker refuses to start when its outbox holds outputs for a sink the
    application no longer has (a pipeline renamed or removed, a to_sinks
    list shortened): they would never be delivered.  Restore the sink, or
    deliver them with the application that has it, or discard them with
    this command.  Refused while a worker runs on the database.

    \b
    Example:
      wallaroo recovery discard-outputs ./state --sink 'alphabet:0'
    """
    from .recovery.errors import StoreError
    from .recovery.sqlite_store import discard_outputs
    try:
        what, n = discard_outputs(directory, worker, sink)
    except (StoreError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"worker {worker!r}: discarded {n} undelivered outputs of {what}")


@recovery.command("accept-rollback", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--worker", required=True, metavar="NAME",
              help="The worker whose database is behind its position file.")
def recovery_accept_rollback(directory, worker):
    """Accept that a worker's database lost its last commits, and let the
    worker start from what the database holds.

    A worker refuses to start when its database is behind the position it
    last committed (its -wal file deleted or damaged, an older copy
    restored): acknowledged input would otherwise be lost without a word.
    Restore the files if you can.  If you cannot, this command records the
    database's own position as the last one; the lost commits stay lost
    (their inputs, if resumable, are not resent: the senders were told they
    were durable).  Refused while a worker runs on the database.

    \b
    Example:
      wallaroo recovery accept-rollback ./state --worker initializer
    """
    from .recovery.errors import StoreError
    from .recovery.sqlite_store import accept_rollback
    try:
        old, new = accept_rollback(directory, worker)
    except (StoreError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if old is None:
        click.echo(f"recorded worker {worker!r}'s position: commit {new.commits}, "
                   f"next lsn {new.next_lsn}")
    else:
        lost = max(0, old.commits - new.commits)
        click.echo(f"worker {worker!r}: the position now says commit {new.commits} "
                   f"(next lsn {new.next_lsn}); it said commit {old.commits} (next "
                   f"lsn {old.next_lsn}): {lost} commits and "
                   f"{max(0, old.next_lsn - new.next_lsn)} messages accepted as lost")


@recovery.command("compact", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--worker", metavar="NAME",
              help="Only this worker's database (default: every one in DIRECTORY).")
def recovery_compact(directory, worker):
    """Give the free pages of stopped workers' databases back to the file
    system (a full VACUUM), offline.

    A running worker reuses the pages its deleted rows free, and gives
    them back in small steps when more than a quarter of its file is free
    (incremental vacuum); this gives back every one at once.  A database
    made before incremental vacuum existed is converted to it.  Refused
    while a worker runs on a database, and on a database a worker would
    refuse to start on (damaged, rolled back).

    \b
    Example:
      wallaroo recovery compact ./state
    """
    from .recovery.errors import StoreError
    from .recovery.files import worker_names
    from .recovery.sqlite_store import compact_database
    names = [worker] if worker else worker_names(directory)
    if not names:
        raise click.ClickException(f"{directory} holds no worker database (*.db)")
    for name in names:
        try:
            before, after = compact_database(directory, name)
        except (StoreError, OSError) as e:
            raise click.ClickException(f"worker {name!r}: {e}") from None
        click.echo(f"worker {name!r}: {before:,} -> {after:,} bytes "
                   f"(database and WAL)")
