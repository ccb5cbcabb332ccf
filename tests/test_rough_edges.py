"""What a new user ran into in a first hour, each fixed and kept fixed:
the application's own traceback when importing it or its
application_setup fails, a directory given as APP, and the habitual
(output, bool) of a state computation declared with state=..."""

from __future__ import annotations

import logging

import wallaroo
from wallaroo.testing import Driver

from .conftest import WAIT


def test_an_error_in_application_setup_shows_the_applications_traceback(
        procs, tmp_path):
    app = tmp_path / "bad_setup.py"
    app.write_text("import wallaroo\n\n"
                   "def helper(d):\n"
                   "    return d['missing']\n\n"
                   "def application_setup(args):\n"
                   "    return helper({})\n")
    w = procs("run", str(app), "--in", "127.0.0.1:0", "--out", "127.0.0.1:9")
    assert w.wait(WAIT) == 2
    err = w.stderr
    assert "raised KeyError: 'missing'" in err
    assert f'File "{app}", line 7, in application_setup' in err
    assert f'File "{app}", line 4, in helper' in err
    assert "return d['missing']" in err
    assert "wallaroo/runtime" not in err  # only the application's frames


def test_an_error_while_importing_the_application_shows_where(procs, tmp_path):
    app = tmp_path / "bad_import.py"
    app.write_text("import wallaroo\nTABLE = {}\nX = TABLE['nope']\n")
    w = procs("run", str(app), "--in", "127.0.0.1:0", "--out", "127.0.0.1:9")
    assert w.wait(WAIT) == 2
    assert f'File "{app}", line 3, in <module>' in w.stderr
    assert "X = TABLE['nope']" in w.stderr


def test_a_directory_given_as_the_application_says_so(procs, tmp_path):
    (tmp_path / "my_app.py").write_text("")
    w = procs("run", str(tmp_path), "--in", "127.0.0.1:0", "--out", "127.0.0.1:9")
    assert w.wait(WAIT) == 2
    assert "is a directory: give the application's .py file (it holds my_app.py)" \
        in w.stderr


class Total:
    def __init__(self):
        self.n = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return int(bs)


@wallaroo.partition
def one_key(x):
    return 0


@wallaroo.state_computation(name="add up", state=Total)
def add_up(x, total):
    total.n += x
    return (total.n, True)  # out of habit: with state=... only the output


@wallaroo.encoder
def encode(out):
    return repr(out).encode()


def habitual_app():
    ab = wallaroo.ApplicationBuilder("habit")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", "0", decode))
    ab.to_state_partition(add_up, Total, "totals", one_key)
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "9", encode))
    return ab.build()


def test_a_habitual_output_and_bool_with_state_is_warned_once_per_step(caplog):
    d = Driver(habitual_app())
    d.start()
    with caplog.at_level(logging.WARNING, logger="wallaroo"):
        d.feed("p", [b"1", b"2", b"3"])
        d.run_batch()
    warnings = [r.getMessage() for r in caplog.records
                if "a pair ending in a bool" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "step 'add up'" in warnings[0]
    # the pair is a legal output: it is kept, not dropped
    assert d.received() == b"(1, True)(3, True)(6, True)"


def test_the_readme_says_where_the_command_is_and_links_only_inside():
    """The README tells a new user how to reach `wallaroo` after its first
    command, and every relative link of the README, docs/ and the examples'
    READMEs points at a file of this repository."""
    import re
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    assert ".venv/bin/wallaroo" in readme and "source .venv/bin/activate" in readme
    assert "../shared" not in readme
    pages = [repo / "README.md", *repo.glob("docs/*.md"), *repo.glob("docs/design/*.md"),
             *repo.glob("examples/*/README.md"),
             repo / "benchmarks" / "README.md"]
    bad = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path = (page.parent / target).resolve()
            if repo not in path.parents and path != repo or not path.exists():
                bad.append(f"{page.relative_to(repo)}: {target}")
    assert not bad, bad


def test_long_recovery_says_how_far_it_is(tmp_path, caplog, monkeypatch):
    """Recovery that takes longer than a progress interval logs how many
    partitions it loaded and inputs it replayed, of how many."""
    from wallaroo.runtime import replay
    monkeypatch.setattr(replay, "PROGRESS_EVERY", 0.0)  # every step "takes long"
    d = Driver(habitual_app(), resilience_dir=str(tmp_path))
    d.start()
    for i in range(5):
        d.feed("p", [b"1"] * 10)
        d.run_batch()
    d.crash()
    with caplog.at_level(logging.INFO, logger="wallaroo"):
        d.start()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(
        "recovery: ")]
    replayed = [x for x in lines if x.startswith("recovery: replaying the input log")]
    assert replayed and all(" of 50 messages (" in x for x in replayed), lines
