"""ShardedDict (wallaroo/runtime/sharded.py) behaves as a dict for what the
per-partition bookkeeping does with it: a hypothesis model against dict."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from wallaroo.runtime.sharded import ShardedDict

keys = st.one_of(st.integers(-5, 300), st.floats(allow_nan=False, width=16),
                 st.booleans(), st.text(max_size=3), st.tuples(st.integers(0, 3)))
ops = st.lists(st.tuples(st.sampled_from(["set", "pop", "popd", "del", "get", "in"]),
                         keys, st.integers()), max_size=200)


@given(ops)
def test_it_is_a_dict(program):
    model, sharded = {}, ShardedDict()
    for op, key, value in program:
        if op == "set":
            model[key] = value
            sharded[key] = value
        elif op == "popd":
            assert sharded.pop(key, None) == model.pop(key, None)
        elif op in ("pop", "del"):
            if key in model:
                assert (sharded.pop(key) if op == "pop" else sharded.__delitem__(key)) \
                    == (model.pop(key) if op == "pop" else model.__delitem__(key))
            else:
                with pytest.raises(KeyError):
                    sharded.pop(key) if op == "pop" else sharded.__delitem__(key)
        elif op == "get":
            assert sharded.get(key, -1) == model.get(key, -1)
        else:
            assert (key in sharded) == (key in model)
        assert len(sharded) == len(model) and bool(sharded) == bool(model)
    assert sorted(map(repr, sharded)) == sorted(map(repr, model))
    assert dict(sharded.items()) == model
    sharded.clear()
    assert not sharded and len(sharded) == 0


def test_equal_keys_are_one_entry():
    d = ShardedDict()
    d[1] = "a"
    d[1.0] = "b"
    d[True] = "c"
    assert len(d) == 1 and d[1] == "c"
