"""The chaos validator must catch what it exists to catch."""

import struct

from .validate import validate, window_ok

W = struct.Struct(">QQQQ")


def windows_for(values):
    """What an exactly-once engine emits for these inputs, in order."""
    state = {0: [0, 0, 0, 0], 1: [0, 0, 0, 0]}
    out = []
    for v in values:
        w = state[v % 2] = state[v % 2][1:] + [v]
        out.append(W.pack(*w))
    return out


def test_exactly_once_output_passes():
    rep = validate(windows_for(range(1, 101)), 100)
    assert rep.ok and rep.duplicates == 0


def test_duplicate_outputs_are_counted_not_failed():
    recs = windows_for(range(1, 51))
    rep = validate(recs + recs[10:20], 50)
    assert rep.ok and rep.duplicates == 10


def test_lost_update_shows_as_gap_and_missing_output():
    vals = [v for v in range(1, 51) if v != 17]
    rep = validate(windows_for(vals), 50)
    assert not rep.ok
    assert rep.lost == [17]
    assert rep.bad_windows  # windows of odd values jump from 15 to 19


def test_double_update_shows_as_repeat():
    vals = list(range(1, 31))
    vals.insert(10, 9)  # 9 applied twice
    rep = validate(windows_for(vals), 30)
    assert not rep.ok and rep.bad_windows


def test_output_lost_but_state_updated_is_missing():
    recs = windows_for(range(1, 41))
    del recs[20]  # the output of 21 never arrived
    rep = validate(recs, 40)
    assert rep.lost == [21] and not rep.ok


def test_final_windows_checked():
    rep = validate(windows_for(range(1, 40)), 40)  # 40 never processed
    assert not rep.ok and not rep.final_ok


def test_window_shapes():
    assert window_ok((0, 0, 1, 3))
    assert window_ok((0, 0, 0, 2))
    assert window_ok((5, 7, 9, 11))
    assert not window_ok((0, 0, 3, 5))  # a partial window must start at 1
    assert not window_ok((5, 7, 7, 9))
    assert not window_ok((5, 9, 11, 13))
    assert not window_ok((1, 0, 3, 5))
    assert not window_ok((0, 0, 0, 0))
