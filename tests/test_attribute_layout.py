"""After a snapshot a plain state object is swapped for a copy whose
attributes CPython keeps inline (wallaroo/runtime/attribute_layout.py), and
only when nothing else holds it: the counts stay exact for every shape of
state, across snapshots, crashes and reloads."""

from __future__ import annotations

import random
import weakref

import pytest

from wallaroo.runtime.attribute_layout import ACTIVE, inline_copy
from wallaroo.testing import Driver

from .apps import layout_app


copies = pytest.mark.skipif(not ACTIVE, reason="inline copies are made on CPython 3.11 only")


def run(driver: Driver, keys: list[str]) -> None:
    driver.feed("in", [k.encode() for k in keys])
    driver.run_batch()


@pytest.mark.parametrize("kind", ["plain", "parented", "slotted", "mapping", "guarded"])
def test_counts_stay_exact_across_snapshots_crashes_and_reloads(tmp_path, kind):
    d = Driver(layout_app, args=["layout", "--kind", kind],
               resilience_dir=str(tmp_path), state_cache=2)
    d.start()
    batches = [["a", "b", "a"], ["a", "c"], ["b", "b", "a"], ["c", "d", "a"]]
    for keys in batches[:2]:
        run(d, keys)
    d.crash()
    d.start()
    for keys in batches[2:]:
        run(d, keys)
    got = d.received().decode().split()
    seen: dict[str, int] = {}
    want = []
    for keys in batches:
        for k in keys:
            seen[k] = seen.get(k, 0) + 1
            want.append(f"{k}:{seen[k]}")
    # a crash resends what was not acknowledged: each output at least once,
    # none that a fold of the input does not make
    assert set(got) == set(want) and len(want) == len(set(want))
    assert d.state("counts", "a").bump() == 6  # the live object is the counted one


def parts_after_one(tmp_path, kind: str) -> tuple[Driver, dict]:
    """A worker with state ``kind`` that counted one "a" (and snapshotted
    it), and its partitions."""
    d = Driver(layout_app, args=["layout", "--kind", kind],
               resilience_dir=str(tmp_path))
    d.start()
    run(d, ["a"])
    return d, d.core.spaces["counts"].parts


@copies
def test_a_plain_state_is_replaced_by_a_copy_after_its_snapshot(tmp_path):
    d, parts = parts_after_one(tmp_path, "plain")
    before = id(parts["a"])  # not a reference: one would keep it as it is
    run(d, ["a"])
    after = parts["a"]
    # made while the old one was alive, so its id differs
    assert id(after) != before and type(after) is layout_app.Plain
    assert after.n == 2 and vars(after) == {"n": 2}


def test_a_state_held_elsewhere_is_kept_as_it_is(tmp_path):
    d, parts = parts_after_one(tmp_path, "parented")
    before = parts["a"]
    run(d, ["a", "a"])
    assert parts["a"] is before and before.n == 3


@copies
def test_inline_copy_copies_plain_objects_only():
    p = layout_app.Plain()
    p.n = 5
    p.items = [1, 2]
    holder = {"k": p}
    assert inline_copy(holder["k"], 1) is p  # p and holder, one declared: kept
    c = inline_copy(p, 2)
    assert c is not p and c.n == 5 and c.items is p.items and type(c) is layout_app.Plain
    ref = weakref.ref(p)
    assert inline_copy(p, 2) is p  # a weak reference would die with it
    del ref
    for cls in (layout_app.Slotted, layout_app.Mapping, layout_app.Guarded, *_KEPT):
        obj = cls()
        assert inline_copy(obj, 1) is obj, cls


class _Seeded(random.Random):  # its generator's state is not in __dict__
    pass


class _Finalized:  # dropping the old object would run __del__
    def __init__(self):
        self.n = 1

    def __del__(self):
        pass


class _Counted:  # a __new__ of its own would run again
    def __new__(cls):
        return super().__new__(cls)


class _Hidden:  # __dict__ is read through __getattribute__
    def __getattribute__(self, name):
        if name == "__dict__":
            raise AttributeError(name)
        return object.__getattribute__(self, name)


class _Shadowed:  # an instance entry under a property's name
    def __init__(self):
        self.__dict__["x"] = 1

    @property
    def x(self):
        return 2

    @x.setter
    def x(self, value):
        raise RuntimeError("the setter")


class _SelfDict:  # an attribute holding the instance dict itself
    def __init__(self):
        self.x = 1
        self.fields = vars(self)


_KEPT = (_Seeded, _Finalized, _Counted, _Hidden, _Shadowed, _SelfDict, ValueError)
