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
Only plain classes get copied: Python classes all the way up to
``object`` whose instances are laid out like those of an empty class (no
``__slots__``, no base written in C such as ``dict``, ``Exception`` or
``random.Random``, whose state lives outside ``__dict__``), with
``object``'s own ``__new__``, ``__setattr__`` and ``__getattribute__``, no
``__del__``, and whose instance dict nothing else references and holds no
name of a data descriptor (a property); every other object is kept as it
is.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

# Only where both the slowdown and the reference counts below were checked:
# CPython 3.11 (this project's).  Later versions changed how attributes are
# laid out and may count references on the interpreter's stack differently;
# there the state object is kept as it is.
ACTIVE = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)


class _Empty:
    pass


# what an instance of a plain class looks like in memory
_LAYOUT = (_Empty.__basicsize__, _Empty.__itemsize__, _Empty.__dictoffset__,
           _Empty.__weakrefoffset__)
_plain: dict[type, bool] = {}


def _is_plain(cls: type) -> bool:
    if (cls.__basicsize__, cls.__itemsize__, cls.__dictoffset__,
            cls.__weakrefoffset__) != _LAYOUT:
        return False  # slots, or a base written in C
    return (cls.__new__ is object.__new__ and cls.__setattr__ is object.__setattr__
            and cls.__getattribute__ is object.__getattribute__
            and not hasattr(cls, "__del__")
            and all("__slots__" not in base.__dict__ for base in cls.__mro__))


def _data_descriptor(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        attr = klass.__dict__.get(name)
        if attr is not None:
            t = type(attr)
            return hasattr(t, "__set__") or hasattr(t, "__delete__")
    return False


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
    try:
        attrs = object.__getattribute__(obj, "__dict__")
        # + 2: the name ``attrs`` and getrefcount's argument; more means a
        # reference to the dict itself (``self.fields = vars(self)``)
        if type(attrs) is not dict or sys.getrefcount(attrs) > 3:
            return obj
        for name in attrs:
            if type(name) is not str or _data_descriptor(cls, name):
                return obj
        new = object.__new__(cls)  # as unpickling makes it (copyreg.__newobj__)
        set_attr = object.__setattr__
        for name, value in attrs.items():
            set_attr(new, name, value)
    except Exception:
        return obj
    return new
