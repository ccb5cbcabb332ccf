"""A state object's attributes kept where CPython reads them fastest.

CPython 3.11 (measured here; later versions changed this) stores a plain object's attributes inline, beside
the object, and its specialised attribute reads and writes go straight to
them.  The first time anything asks for the object's ``__dict__`` the
attributes move into a real dict for good, and every later access takes
the slower dict path: about twice the time of the state's own methods
(``self.votes += v.votes``).  Pickling asks for ``__dict__``, and so does
unpickling, so every state object that had been snapshotted or loaded from
a snapshot ran its application code up to 2x slower than one never saved:
with resilience on, the alphabet benchmark lost 15% of its throughput to
this alone.

After a snapshot (and after a load), the engine swaps in a shallow copy
made attribute by attribute, which CPython lays out inline again.  The
attribute values are the same objects; only the outer object is new, and
only when nothing could tell: the object's reference count says that no
one but the engine holds it (no attribute, list, child or callback of its
own points back at it, no module keeps it) and no weak reference does.
Only plain classes get copied: Python classes all the way up to ``object``
without ``__slots__``, a custom ``__setattr__`` or a base written in C
(a subclass of ``dict`` keeps its items outside ``__dict__``); every other
object is kept as it is.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python
# Only where both the slowdown and the reference counts below were checked:
# CPython 3.11 (this project's).  Later versions changed how attributes are
# laid out and may count references on the interpreter's stack differently;
# there the state object is kept as it is.
ACTIVE = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
_plain: dict[type, bool] = {}


def _is_plain(cls: type) -> bool:
    for base in cls.__mro__:
        if base is object:
            continue
        if not base.__flags__ & _HEAPTYPE or "__slots__" in base.__dict__:
            return False
    return cls.__setattr__ is object.__setattr__


def inline_copy(obj: Any, holders: int) -> Any:
    """``obj``, or a shallow copy of it whose attributes are laid out
    inline (see above) when its class is plain and nothing but the
    caller's ``holders`` references (its variables, the dict it lives in)
    holds it."""
    if not ACTIVE:
        return obj
    cls = type(obj)
    plain = _plain.get(cls)
    if plain is None:
        plain = _plain[cls] = _is_plain(cls)
    # + 2: this function's parameter and getrefcount's own argument
    if not plain or sys.getrefcount(obj) > holders + 2 or weakref.getweakrefcount(obj):
        return obj
    attrs = obj.__dict__
    if type(attrs) is not dict:
        return obj
    set_attr = object.__setattr__
    try:
        new = cls.__new__(cls)  # as unpickling makes it (copyreg.__newobj__)
        for name, value in attrs.items():
            if type(name) is not str:
                return obj
            set_attr(new, name, value)  # a descriptor of that name may refuse
    except Exception:
        return obj
    return new
