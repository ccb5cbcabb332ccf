"""Real processes, real signals: the sequence-window app is SIGKILLed at
random moments while a resumable sender feeds it, and every output is
validated (run_chaos.py; `python -m tests.chaos.run_chaos` for big runs)."""

import pytest

from .run_chaos import run


def test_sigkills_while_data_flows_lose_nothing_and_double_nothing(tmp_path):
    res = run(messages=20000, kills=5, rate=4000, seed=1234, pauses=1,
              workdir=str(tmp_path))
    print(res.summary())
    assert res.kills == 5
    assert res.lost == 0, res.summary()
    assert res.bad_windows == 0, res.summary()
    assert res.final_windows_ok, res.summary()
    assert res.sender_exit == 0 and res.worker_exit == 0, res.summary()
    assert res.replay_mismatch_lines == 0
    assert len(res.recovery_s) == 5  # one recovery per kill


@pytest.mark.slow
def test_long_chaos_run(tmp_path):
    res = run(messages=200000, kills=12, rate=20000, pauses=3, workdir=str(tmp_path))
    print(res.summary())
    assert res.ok, res.summary()


def test_exactly_once_outputs_across_sigkills_of_worker_and_receiver(tmp_path):
    """--resumable-sinks into `wallaroo receive --resumable`: both are
    SIGKILLed at random moments, five times each; every output arrives
    exactly once."""
    res = run(messages=20000, kills=5, rate=4000, seed=4321, pauses=1,
              workdir=str(tmp_path), exactly_once=True, receiver_kills=5)
    print(res.summary())
    assert res.kills == 5 and res.receiver_kills == 5
    assert res.lost == 0 and res.bad_windows == 0, res.summary()
    assert res.duplicates == 0, res.summary()
    assert res.outputs == 20000
    assert res.ok, res.summary()


@pytest.mark.slow
def test_long_exactly_once_chaos_run(tmp_path):
    res = run(messages=200000, kills=12, rate=20000, pauses=3, workdir=str(tmp_path),
              exactly_once=True, receiver_kills=12)
    print(res.summary())
    assert res.ok and res.duplicates == 0, res.summary()


def test_cluster_of_3_survives_sigkills_of_any_worker_and_a_sigstop(tmp_path):
    """3 workers, resumable senders and sinks: the initializer, the worker
    holding the sender's connection and the owner of its stream are each
    SIGKILLed at least once, one worker is SIGSTOPped; every output arrives
    exactly once and every final state is exact."""
    from .cluster_chaos import run as cluster_run
    res = cluster_run(messages=10000, votes=10000, kills=5, pauses=1, rate=2000,
                      seed=2024, workdir=str(tmp_path))
    print(res.summary())
    assert len(res.kills) == 5 and "initializer" in res.kills
    assert res.ok, res.summary()


@pytest.mark.slow
def test_long_cluster_chaos_run(tmp_path):
    from .cluster_chaos import run as cluster_run
    res = cluster_run(messages=100000, votes=100000, kills=12, pauses=3, rate=8000,
                      workdir=str(tmp_path))
    print(res.summary())
    assert res.ok, res.summary()


def test_kafka_counts_exact_across_sigkills(tmp_path):
    """examples/kafka_count with --resilience-dir reads a topic while a
    producer writes 50,000 keyed records; SIGKILLed 3 times: every key's
    final count is exact and no count is missing (kafka_chaos.py)."""
    from .kafka_chaos import run as kafka_run
    res = kafka_run(records=50000, kills=3, rate=10000, seed=77, workdir=str(tmp_path))
    print(res.summary())
    assert len(res.kills) == 3
    assert res.ok, res.summary()


def test_kafka_counts_exact_across_sigkills_on_3_workers(tmp_path):
    """The same on a 3-worker cluster: each worker consumes its share of the
    partitions; every worker, the initializer included, is SIGKILLed."""
    from .kafka_chaos import run as kafka_run
    res = kafka_run(records=50000, kills=3, workers=3, rate=10000, seed=78,
                    workdir=str(tmp_path))
    print(res.summary())
    assert sorted(res.kills) == ["initializer", "worker-1", "worker-2"]
    assert res.ok, res.summary()


def test_kafka_transactional_sinks_give_every_output_exactly_once(tmp_path):
    """--kafka-transactional-sinks on 3 workers, every worker SIGKILLed: a
    read_committed consumer of the output topic sees every count of every
    key exactly once (the sink's position commits inside each transaction)."""
    from .kafka_chaos import run as kafka_run
    res = kafka_run(records=50000, kills=4, workers=3, rate=10000, seed=79,
                    workdir=str(tmp_path), exactly_once=True)
    print(res.summary())
    assert {"initializer", "worker-1", "worker-2"} <= set(res.kills)
    assert res.duplicate_outputs == 0 and res.outputs == 50000, res.summary()
    assert res.ok, res.summary()


def test_grow_shrink_crash_recover_sequence_then_kills_during_moves(tmp_path):
    """Wallaroo's resilience-test sequence on a growing and shrinking
    cluster (Wait 2 s, Grow 1, Wait 2 s, Shrink 1, Wait 2 s, Crash 2, Wait
    2 s, Recover 2, Wait 5 s), resumable senders and sinks, then grows and
    shrinks each with a SIGKILL of a worker or of the supervisor mid-move:
    every window exactly once, every vote total exact."""
    from .rescale_chaos import run as rescale_run
    res = rescale_run(messages=8000, votes=8000, moves=3, rate=1200, seed=7,
                      workdir=str(tmp_path))
    print(res.summary())
    assert res.events[:2] == ["grow --count 1", "shrink --count 1"]
    assert sum("mid-move" in e for e in res.events) == 3
    assert len(res.rescale_seconds) >= 2
    assert res.ok, res.summary()


@pytest.mark.slow
def test_long_rescale_chaos_run(tmp_path):
    from .rescale_chaos import run as rescale_run
    res = rescale_run(messages=60000, votes=60000, moves=12, rate=3000,
                      workdir=str(tmp_path))
    print(res.summary())
    assert res.ok, res.summary()


def test_windows_on_3_workers_each_window_once_across_sigkills(tmp_path):
    """One-second tumbling windows keyed over 40 keys on 3 workers, resumable
    sender and sinks; 5 SIGKILLs (the initializer first), then all three
    at once with the last windows open: every window's
    output arrives once, and each key's windows hold its messages in order,
    each once (windows_chaos.py)."""
    from .windows_chaos import run as windows_run
    res = windows_run(messages=4000, keys=40, kills=5, rate=500, seed=606,
                      workdir=str(tmp_path))
    print(res.summary())
    assert len(res.kills) == 5 + 3 and res.kills[0] == "initializer"
    assert res.windows > 40
    assert res.ok, res.summary()


@pytest.mark.slow
def test_long_windows_chaos_run(tmp_path):
    from .windows_chaos import run as windows_run
    res = windows_run(messages=40000, keys=100, kills=10, rate=2000,
                      workdir=str(tmp_path))
    print(res.summary())
    assert res.ok, res.summary()


def test_live_moves_with_sigkills_of_any_party_lose_nothing(tmp_path):
    """Key groups move live (`wallaroo cluster move`) on 3 workers while
    resumable senders feed them; during moves the taker, a giver or a
    bystander is SIGKILLed, or the move command itself (run again, it
    finishes the move it finds under way)."""
    from .live_move_chaos import run as live_run
    res = live_run(messages=10000, votes=10000, moves=5, rate=1500, seed=77,
                   workdir=str(tmp_path), then_grow=True)
    print(res.summary())
    assert res.ok, res.summary()
    assert res.moves_done >= 2, res.summary()
    # the move left half done was finished by the grow, which went on
    assert any(e.startswith("grow: rescaled") for e in res.events), res.summary()


def test_live_moves_of_lazily_loaded_state_with_sigkills_lose_nothing(tmp_path):
    """The same with ``--state-cache 20`` (1,000 vote keys and the windows'
    keys on 3 workers): moved partitions go from the giver's store to the
    taker's without being loaded, while parties are SIGKILLed."""
    from .live_move_chaos import run as live_run
    res = live_run(messages=6000, votes=6000, moves=4, rate=1500, state_cache=20,
                   seed=78, workdir=str(tmp_path))
    print(res.summary())
    assert res.ok, res.summary()
    assert res.moves_done >= 2, res.summary()


def test_live_grows_and_shrinks_with_sigkills_lose_nothing(tmp_path):
    """`wallaroo cluster grow --live` twice (2 -> 4 workers) and `shrink
    --live` once among live moves while resumable senders feed the
    cluster, a worker SIGKILLed during most grows, shrinks and moves:
    every window and vote exactly once."""
    from .live_move_chaos import run as live_run
    res = live_run(messages=8000, votes=8000, moves=3, grows=2, shrinks=1,
                   rate=1500, workers=2, seed=91, workdir=str(tmp_path))
    print(res.summary())
    assert res.ok, res.summary()
    assert res.grows_done >= 2 and res.shrinks_done == 1, res.summary()


@pytest.mark.slow
def test_long_live_move_chaos_run(tmp_path):
    from .live_move_chaos import run as live_run
    res = live_run(messages=60000, votes=60000, moves=20, rate=2000,
                   workdir=str(tmp_path))
    print(res.summary())
    assert res.ok, res.summary()
