"""``wallaroo cluster grow`` and ``wallaroo cluster shrink``: rescaling a
running cluster.  One host (``wallaroo run APP --workers N
--resilience-dir DIR``): the command reaches the supervisor through its
Unix socket, ``DIR/supervisor.sock`` (mode 0600: whoever may use the
resilience directory may rescale), sends one JSON line and prints the
answer.  Several hosts: ``shrink --control H:P --cluster-secret-file F``
asks any worker's control port (authenticated with the cluster secret),
which passes the request to the cluster's first member; a cluster over
several hosts grows by a worker started with ``wallaroo run APP --join``.
See docs/cluster.md, "Rescaling" and "Rescaling (several hosts)"."""

from __future__ import annotations

import json
import os
import socket

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
TIMEOUT = 600.0  # a rescale of big state takes a while; the answer waits


@click.group(context_settings=CONTEXT)
def cluster():
    """Grow or shrink a running cluster (key groups move to their new owners
    with their state; nothing is lost or applied twice).  One host: `grow`
    and `shrink` DIRECTORY.  Several hosts: a new worker joins with
    `wallaroo run APP --join H:P ...`, and `shrink --control H:P
    --cluster-secret-file F` removes workers."""


def _ask(directory: str, request: dict) -> dict:
    from .runtime.rescale import socket_path
    path = socket_path(directory)
    if not os.path.exists(path):
        raise click.ClickException(
            f"{path} does not exist: no supervisor runs on {directory} (start "
            f"the cluster with `wallaroo run APP --workers N --resilience-dir "
            f"{directory}`; several hosts: `wallaroo cluster shrink --control "
            f"H:P --cluster-secret-file F`, and `wallaroo run APP --join H:P` "
            f"to grow)")
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


def _wait_for_rescale(coordinator, secret: bytes, new: list[str],
                      deadline: float) -> str:
    """Poll the coordinator's MEMBERS until the rescale is over: "done"
    (the members are ``new``), "abandoned" (no rescale in progress and the
    members are not ``new``) or "timeout"."""
    import time

    import trio

    from .runtime.control import ASK_ERRORS, ask
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            got = trio.run(lambda: ask(coordinator, secret, "MEMBERS", timeout=5))
        except ASK_ERRORS:
            continue  # the coordinator is between two runs
        if "rescale" in got:
            continue
        return "done" if got.get("members") == new else "abandoned"
    return "timeout"


def _ask_again(address, secret: bytes, body: dict, deadline: float) -> dict | None:
    """SHRINK again once the worker at ``address`` answers and no rescale
    is in progress there; None when the deadline passes first."""
    import time

    import trio

    from .runtime.control import ASK_ERRORS, ask_verb
    while time.monotonic() < deadline:
        try:
            answer = trio.run(lambda: ask_verb(address, secret, "SHRINK", body,
                                               timeout=60))
        except ASK_ERRORS:
            time.sleep(0.5)
            continue
        if "a rescale is in progress" in answer.get("error", ""):
            time.sleep(0.5)
            continue
        return answer
    return None


def _done(answer: dict) -> None:
    click.echo(f"rescaled in {answer['seconds']:.2f}s: {len(answer['members'])} "
               f"workers ({', '.join(answer['members'])})")


def _remote_options(fn):
    """``--control`` and ``--cluster-secret-file`` (several hosts)."""
    fn = click.option("--cluster-secret-file", type=click.Path(dir_okay=False),
                      metavar="FILE", help="With --control: the cluster's secret.")(fn)
    return click.option("--control", "control", metavar="HOST:PORT",
                        help="Several hosts: any worker's control address "
                             "(instead of DIRECTORY).")(fn)


@cluster.command("grow", context_settings=CONTEXT)
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many workers to add.")
@click.option("--live", is_flag=True,
              help="Grow while the cluster runs: the new workers join with no "
                   "key groups and live moves give them their share, while "
                   "every other group flows (no stop; applications without "
                   "0.6 windows).  Without it every worker stops and restarts.")
def grow(directory, count, live):
    """Add workers to the cluster running on DIRECTORY (its --resilience-dir;
    default: the current directory).  New workers are named by the cluster's
    rule (the lowest free worker-<i>); they take their share of the key
    groups, with their state.

    \b
    Examples:
      wallaroo cluster grow ./state --count 1
      wallaroo cluster grow ./state --live
    """
    answer = _ask(directory, {"op": "grow", "count": count, "live": live})
    if not live:
        _done(answer)
        return
    click.echo(f"grew live in {answer['seconds']:.2f}s: {len(answer['members'])} "
               f"workers ({', '.join(answer['members'])}); {answer['moved']} key "
               f"groups moved to the new workers in {answer['moves']} moves, the "
               f"longest wait of a moving group {answer['longest_wait']:.3f}s")


@cluster.command("shrink", context_settings=CONTEXT)
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--names", metavar="W1,W2", help="The workers that leave.")
@click.option("--count", type=click.IntRange(min=1),
              help="How many workers leave (the last ones).")
@click.option("--query", is_flag=True, help="List which workers may leave.")
@click.option("--live", is_flag=True,
              help="Shrink while the cluster runs.  The leaving workers (the "
                   "last ones, which joined with `grow --live` or `--join ... "
                   "--live`) give their key groups away by live moves, drain "
                   "and stop, while every other group flows.  Without it every "
                   "worker stops and restarts.")
@_remote_options
def shrink(directory, names, count, query, live, control, cluster_secret_file):
    """Remove workers from the cluster running on DIRECTORY (one host), or
    reached at --control (several hosts).  A leaving worker hands its key
    groups (with their state) to the others and stops; its database stays,
    marked retired (`wallaroo recovery inspect` shows it), with any output
    it had not delivered.

    \b
    Examples, one host:
      wallaroo cluster shrink ./state --query
      wallaroo cluster shrink ./state --names worker-2
      wallaroo cluster shrink ./state --count 1

    \b
    One host, while it runs (worker-2 joined with `grow --live`):
      wallaroo cluster shrink ./state --count 1 --live

    \b
    Several hosts (worker-2 leaves; its host can go):
      wallaroo cluster shrink --control 10.0.0.1:7100 \\
          --cluster-secret-file secret --names worker-2

    \b
    Several hosts, while it runs (worker-3 joined with --join ... --live):
      wallaroo cluster shrink --control 10.0.0.1:7100 \\
          --cluster-secret-file secret --names worker-3 --live
    """
    if control is not None:
        if live and not query:
            return _shrink_remote_live(control, cluster_secret_file, names, count)
        return _shrink_remote(control, cluster_secret_file, names, count, query)
    if query:
        a = _ask(directory, {"op": "query"})
        click.echo(f"members: {', '.join(a['members'])}")
        click.echo(f"may leave: {', '.join(a['may_leave']) or 'none'}")
        if "may_leave_live" in a:
            click.echo(f"may leave with --live (the last ones of these): "
                       f"{', '.join(a['may_leave_live']) or 'none'}")
        return
    if (names is None) == (count is None):
        raise click.UsageError("give --names W1,W2 or --count K (or --query)")
    request = {"op": "shrink", "live": live}
    if names is not None:
        request["names"] = [n.strip() for n in names.split(",") if n.strip()]
    else:
        request["count"] = count
    answer = _ask(directory, request)
    if not live:
        _done(answer)
        return
    click.echo(f"shrank live in {answer['seconds']:.2f}s: {len(answer['members'])} "
               f"workers ({', '.join(answer['members'])}); {answer['moved']} key "
               f"groups moved from the leaving workers in {answer['moves']} moves, "
               f"the longest wait of a moving group {answer['longest_wait']:.3f}s")


def _shrink_remote_live(control: str, secret_file: str | None, names,
                        count) -> None:
    """Several hosts, ``--live``: this command coordinates
    (runtime/host_live_shrink.py)."""
    import trio

    from .runtime.host_live_shrink import ShrinkFailed, shrink_hosts
    from .runtime.live_coordinator import MoveFailed
    if (names is None) == (count is None):
        raise click.UsageError("give --names W1,W2 or --count K (or --query)")
    addresses, secret = _control_addresses(".", control, secret_file)
    wanted = None if names is None else [x.strip() for x in names.split(",")
                                         if x.strip()]
    try:
        answer = trio.run(lambda: shrink_hosts(addresses, secret, wanted, count,
                                               echo=click.echo))
    except (ShrinkFailed, MoveFailed) as e:
        again = getattr(e, "again", True)
        raise click.ClickException(
            f"the shrink stopped: {e}" + (".  Nothing is lost; run the command "
                                          "again to go on from there" if again
                                          else "")) from None
    click.echo(f"shrank live in {answer['seconds']:.2f}s: {len(answer['members'])} "
               f"workers ({', '.join(answer['members'])}); {answer['moved']} key "
               f"groups moved from the leaving workers in {answer['moves']} moves, "
               f"the longest wait of a moving group {answer['longest_wait']:.3f}s")


def _shrink_remote(control: str, secret_file: str | None, names, count,
                   query) -> None:
    import time

    import trio

    from .connectors.auth import AuthError, load_secret
    from .runtime.control import ASK_ERRORS, ask_verb
    from .tools.common import parse_address
    if not secret_file:
        raise click.UsageError("--control needs --cluster-secret-file FILE")
    if not query and (names is None) == (count is None):
        raise click.UsageError("give --names W1,W2 or --count K (or --query)")
    try:
        address = parse_address(control, "--control")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--control") from None
    try:
        secret = load_secret(secret_file)
    except (AuthError, OSError) as e:
        raise click.ClickException(str(e)) from None
    body = {"query": True} if query else (
        {"names": [n.strip() for n in names.split(",") if n.strip()]}
        if names is not None else {"count": count})

    def call(fn, *args, **kw):
        try:
            return trio.run(lambda: fn(*args, **kw))
        except ASK_ERRORS as e:
            raise click.ClickException(f"{control}: {e or type(e).__name__}") from None

    t0 = time.monotonic()
    deadline = t0 + TIMEOUT
    answer = call(ask_verb, address, secret, "SHRINK", body, timeout=60)
    if "error" in answer:
        raise click.ClickException(answer["error"])
    if query:
        click.echo(f"members: {', '.join(answer['members'])}")
        click.echo(f"may leave: {', '.join(answer['may_leave']) or 'none'}")
        if "may_leave_live" in answer:
            click.echo(f"may leave with --live (the last ones of these): "
                       f"{', '.join(answer['may_leave_live']) or 'none'}")
        if answer.get("rescaling"):
            click.echo("a rescale is in progress")
        return
    while True:
        new = answer["plan"]["new"]
        coordinator = parse_address(answer["coordinator"], "coordinator")
        click.echo(f"rescale {answer['accepted']} accepted: "
                   f"{len(answer['plan']['old'])} -> {len(new)} workers")
        outcome = _wait_for_rescale(coordinator, secret, new, deadline)
        if outcome == "done":
            _done({"seconds": time.monotonic() - t0, "members": new})
            return
        if outcome != "abandoned":
            break
        # the coordinator stopped before the drain was done (docs/cluster.md,
        # "Kills"): every worker runs as before, and the shrink is asked again
        click.echo(f"rescale {answer['accepted']} abandoned: the cluster runs "
                   f"as before; asking again", err=True)
        answer = _ask_again(address, secret, body, deadline)
        if answer is None:
            break
        if "error" in answer:
            raise click.ClickException(answer["error"])
    raise click.ClickException(f"the rescale did not finish within {TIMEOUT:.0f}s; "
                               f"`wallaroo status --control {control} "
                               f"--cluster-secret-file {secret_file}` shows where "
                               f"it is")


@cluster.command("move", context_settings=CONTEXT)
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--groups", required=True, metavar="A-B,C",
              help="The key groups to move: numbers and ranges.")
@click.option("--to", "taker", required=True, metavar="WORKER",
              help="The worker that takes them.")
@click.option("--step", type=click.IntRange(min=1), default=64, show_default=True,
              help="Key groups per move: each move holds the giver's and the "
                   "taker's other groups for one batch, longer for more groups.")
@_remote_options
def move(directory, groups, taker, step, control, cluster_secret_file):
    """Move key groups, with their state, to another worker while the
    cluster runs: only the moving groups' messages wait (from the taker's
    switch to its take); every other group flows.  A move left unfinished
    (this command was stopped or killed) is finished first.  `wallaroo
    status` shows the key groups per worker.

    \b
    Examples:
      wallaroo cluster move ./state --groups 0-99 --to worker-1
      wallaroo cluster move --control 10.0.0.1:7100 \\
          --cluster-secret-file secret --groups 512-767 --to worker-2
    """
    import trio

    from .runtime.live_coordinator import Coordinator, MoveFailed, parse_groups
    try:
        wanted = parse_groups(groups)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--groups") from None
    addresses, secret = _control_addresses(directory, control, cluster_secret_file)
    # one host: a restarted worker has a new control port (cluster.json);
    # several hosts give each worker a fixed one (--my-control)
    coordinator = Coordinator(addresses, secret, TIMEOUT, refresh=None if control
                              else lambda: _control_addresses(directory, None, None)[0],
                              step=step)
    try:
        reports = trio.run(coordinator.move, wanted, taker)
    except MoveFailed as e:
        raise click.ClickException(str(e)) from None
    if not reports:
        click.echo(f"nothing to move: {taker} owns those key groups")
    for r in reports:
        click.echo(f"move {r.epoch}{' (found under way, finished)' if r.resumed else ''}: "
                   f"{len(r.groups)} key groups {r.giver} -> {r.taker} in "
                   f"{r.seconds:.3f}s; their messages waited {r.waited:.3f}s")
    if len(reports) > 1:
        click.echo(f"{sum(len(r.groups) for r in reports)} key groups in "
                   f"{len(reports)} moves, {sum(r.seconds for r in reports):.3f}s; "
                   f"the longest wait of a moving group {max(r.waited for r in reports):.3f}s")


def _control_addresses(directory: str, control: str | None,
                       secret_file: str | None) -> tuple[dict, bytes]:
    """Every member's control address and the cluster secret: from the
    supervisor's cluster.json and cluster.secret in DIRECTORY, or (several
    hosts) from the MEMBERS answer of the worker at ``control``."""
    import trio

    from .connectors.auth import AuthError, load_secret
    from .runtime.control import ASK_ERRORS, ask
    from .tools.common import parse_address
    if control is None:
        secret_file = os.path.join(directory, "cluster.secret")
    elif not secret_file:
        raise click.UsageError("--control needs --cluster-secret-file FILE")
    try:
        secret = load_secret(secret_file)
    except (AuthError, OSError) as e:
        raise click.ClickException(
            f"{e}" + ("" if control else f" (is {directory} the --resilience-dir "
                      f"of a cluster started with --workers N?)")) from None
    addresses = {}
    try:
        if control is None:
            path = os.path.join(directory, "cluster.json")
            with open(path) as f:
                workers = json.load(f)["workers"]
            for w in workers:
                if not w.get("control"):
                    raise click.ClickException(
                        f"{path}: worker {w['name']!r} has no control address "
                        f"yet (starting?); try again")
                addresses[w["name"]] = parse_address(w["control"], "control")
        else:
            at = parse_address(control, "--control")
            got = trio.run(lambda: ask(at, secret, "MEMBERS", timeout=10))
            for name in got["members"]:
                a = (got.get("addresses") or {}).get(name, {})
                if not a.get("control"):
                    raise click.ClickException(
                        f"{control}: the address of worker {name!r} is not known")
                addresses[name] = parse_address(a["control"], "control")
    except (OSError, ValueError, KeyError) as e:
        raise click.ClickException(f"cannot find the workers' control addresses: "
                                   f"{e}") from None
    except ASK_ERRORS as e:
        raise click.ClickException(f"{control}: {e or type(e).__name__}") from None
    return addresses, secret
