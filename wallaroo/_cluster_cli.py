"""``wallaroo cluster grow`` and ``wallaroo cluster shrink``: rescaling a
running one-host cluster (``wallaroo run APP --workers N
--resilience-dir DIR``).  The command reaches the supervisor through its
Unix socket, ``DIR/supervisor.sock`` (mode 0600: whoever may use the
resilience directory may rescale), sends one JSON line and prints the
answer.  See docs/cluster.md, "Rescaling"."""

from __future__ import annotations

import json
import os
import socket

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
TIMEOUT = 600.0  # a rescale of big state takes a while; the answer waits


@click.group(context_settings=CONTEXT)
def cluster():
    """Grow or shrink a running cluster on this host (key groups move to
    their new owners with their state; nothing is lost or applied twice)."""


def _ask(directory: str, request: dict) -> dict:
    from .runtime.rescale import socket_path
    path = socket_path(directory)
    if not os.path.exists(path):
        raise click.ClickException(
            f"{path} does not exist: no supervisor runs on {directory} (start "
            f"the cluster with `wallaroo run APP --workers N --resilience-dir "
            f"{directory}`; several hosts: not supported yet, restart every "
            f"worker instead)")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            more = s.recv(65536)
            if not more:
                break
            data += more
    except OSError as e:
        raise click.ClickException(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        answer = json.loads(data)
    except ValueError:
        raise click.ClickException(f"{path}: the supervisor closed without an "
                                   f"answer (see its log)") from None
    if "error" in answer:
        raise click.ClickException(answer["error"])
    return answer


def _done(answer: dict) -> None:
    click.echo(f"rescaled in {answer['seconds']:.2f}s: {len(answer['members'])} "
               f"workers ({', '.join(answer['members'])})")


@cluster.command("grow", context_settings=CONTEXT)
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many workers to add.")
def grow(directory, count):
    """Add workers to the cluster running on DIRECTORY (its --resilience-dir;
    default: the current directory).  New workers are named by the cluster's
    rule (the lowest free worker-<i>); they take their share of the key
    groups, with their state.

    \b
    Example:
      wallaroo cluster grow ./state --count 1
    """
    _done(_ask(directory, {"op": "grow", "count": count}))


@cluster.command("shrink", context_settings=CONTEXT)
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--names", metavar="W1,W2", help="The workers that leave.")
@click.option("--count", type=click.IntRange(min=1),
              help="How many workers leave (the last ones).")
@click.option("--query", is_flag=True, help="List which workers may leave.")
def shrink(directory, names, count, query):
    """Remove workers from the cluster running on DIRECTORY.  A leaving
    worker hands its key groups (with their state) to the others and
    stops; its database stays, marked retired (`wallaroo recovery
    inspect` shows it), with any output it had not delivered.

    \b
    Example:
      wallaroo cluster shrink ./state --query
      wallaroo cluster shrink ./state --names worker-2
      wallaroo cluster shrink ./state --count 1
    """
    if query:
        a = _ask(directory, {"op": "query"})
        click.echo(f"members: {', '.join(a['members'])}")
        click.echo(f"may leave: {', '.join(a['may_leave']) or 'none'}")
        return
    if (names is None) == (count is None):
        raise click.UsageError("give --names W1,W2 or --count K (or --query)")
    request = {"op": "shrink"}
    if names is not None:
        request["names"] = [n.strip() for n in names.split(",") if n.strip()]
    else:
        request["count"] = count
    _done(_ask(directory, request))
