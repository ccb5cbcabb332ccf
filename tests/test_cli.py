"""The `wallaroo` command line: argument passing to the application, module
loading, help text."""

import json
import os
import signal
import subprocess
import sys

import click
import pytest

from wallaroo.cli import cli

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "apps", "args_app.py")


def start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "wallaroo.cli", "run", *args],
                            stderr=subprocess.PIPE, text=True, env=env)


def until_ready(p):
    lines = []
    for line in p.stderr:
        lines.append(line)
        if line.startswith("ready"):
            return lines
    raise AssertionError("no ready line:\n" + "".join(lines))


def stop(p):
    p.send_signal(signal.SIGTERM)
    rest = p.communicate(timeout=30)[1]
    return p.returncode, rest


def test_application_gets_every_argument_in_order_engine_options_included():
    args = [APP, "--window", "5", "--in", "127.0.0.1:0", "--name", "w1",
            "-x", "--out=127.0.0.1:9", "--checkpoint-interval", "2", "tail"]
    p = start(*args)
    try:
        lines = until_ready(p)
        seen = json.loads(next(x for x in lines if x.startswith("ARGS "))[5:])
        assert seen == args
        assert any("[w1]" in x for x in lines)  # --name reached the engine too
        assert stop(p)[0] == 0
    finally:
        p.kill()


def test_application_module_option(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.join(HERE, "apps")}
    p = start("--application-module", "args_app", "--in", "127.0.0.1:0",
              "--out", "127.0.0.1:9", env=env)
    try:
        lines = until_ready(p)
        seen = json.loads(next(x for x in lines if x.startswith("ARGS "))[5:])
        assert seen == ["--application-module", "args_app", "--in", "127.0.0.1:0",
                        "--out", "127.0.0.1:9"]
        assert stop(p)[0] == 0
    finally:
        p.kill()


@pytest.mark.parametrize("app, message", [
    ("no_such_file.py", "does not exist"),
    ("no_such_module_xyz", "cannot import application module"),
])
def test_an_application_that_cannot_be_found_exits_2(app, message):
    done = subprocess.run([sys.executable, "-m", "wallaroo.cli", "run", app],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr


def test_a_busy_source_port_is_reported_with_the_pipeline():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "wallaroo.cli", "run", APP,
                               "--in", f"127.0.0.1:{port}", "--out", "127.0.0.1:9"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"pipeline 'p': cannot listen on 127.0.0.1:{port}" in done.stderr


def all_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


@pytest.mark.parametrize("path, cmd", list(all_commands(cli)),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_is_documented_with_an_example(path, cmd):
    assert cmd.help and len(cmd.help) > 40, path
    if not isinstance(cmd, click.Group):
        assert "Example" in cmd.help, f"wallaroo {' '.join(path)} has no Example"


def test_version():
    done = subprocess.run([sys.executable, "-m", "wallaroo.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "wallaroo" in done.stdout
