"""Pickling of state snapshots and partition keys.

Plain ``pickle`` first: it is the fastest and application classes resolve by
module name, since the application module is loaded under a stable name.
``cloudpickle`` only when plain pickle cannot (lambdas, classes defined inside
functions).  Either way ``pickle.loads`` reads the result back.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
import pickletools
import types
from typing import Any, Iterable

import cloudpickle

from .errors import UnpicklableState

PROTOCOL = 5


APPLICATION = "application"  # made by the application's serialize()


def dumps(obj: Any, what: str, serializer=None) -> tuple[bytes, str]:
    """-> (blob, pickler name).  ``what`` names the state and key for the
    error a user sees when neither pickler can do it.  ``serializer``: the
    application module's (serialize, deserialize), used instead when it
    defines them (Wallaroo's contract for state and messages)."""
    if serializer is not None:
        try:
            blob = serializer[0](obj)
            if isinstance(blob, str):
                blob = blob.encode("utf-8")
            if not isinstance(blob, (bytes, bytearray)):
                raise TypeError(f"serialize() returned {type(blob).__name__}, "
                                f"not bytes")
            return bytes(blob), APPLICATION
        except Exception as e:
            raise UnpicklableState(f"{what} cannot be serialized by the "
                                   f"application's serialize(): "
                                   f"{type(e).__name__}: {e}") from e
    try:
        return pickle.dumps(obj, PROTOCOL), "pickle"
    except Exception as first:
        try:
            return cloudpickle.dumps(obj, PROTOCOL), "cloudpickle"
        except Exception as e:
            raise UnpicklableState(
                f"{what} cannot be pickled, so it cannot be made durable: "
                f"{type(e).__name__}: {e} (plain pickle said: {first}). "
                f"Keep state in plain attributes (numbers, strings, lists, "
                f"dicts, objects of module-level classes).") from e


class _RecordingPickler(pickle.Pickler):
    """Plain pickle that notes the classes and functions it refers to by
    name.  ``reducer_override`` is not called for the builtin types pickle
    writes itself (numbers, strings, lists, dicts...), so a state made of
    them costs one call per object of a class, not one per value."""

    def reducer_override(self, obj):
        if isinstance(obj, _NAMED):
            self.refs.add(ref_of(obj))
        return NotImplemented


_NAMED = (type, types.FunctionType, types.BuiltinFunctionType)


def ref_of(obj: Any) -> str:
    """``module:qualname``, how pickle finds a class or function again."""
    return f"{getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', '?')}"


def dumps_state(obj: Any, what: str, serializer=None) -> tuple[bytes, str, tuple]:
    """Like ``dumps``, and also the class references the snapshot needs to
    be loaded again (sorted ``module:qualname`` strings), recorded with it
    so a restart can check them all before it opens its ports without
    reading every snapshot.  For the application's ``serialize()``, whose
    bytes are opaque, the reference is the state's own type."""
    if serializer is not None:
        blob, pickler = dumps(obj, what, serializer)
        return blob, pickler, (ref_of(type(obj)),)
    f = io.BytesIO()
    p = _RecordingPickler(f, PROTOCOL)
    p.refs = set()
    try:
        p.dump(obj)
        return f.getvalue(), "pickle", tuple(sorted(p.refs))
    except Exception:
        blob, pickler = dumps(obj, what)
        return blob, pickler, pickle_refs(blob)


def pickle_refs(blob: bytes) -> tuple:
    """The class and function references in a pickle, read from its
    opcodes (nothing is imported or run): for snapshots written before
    references were recorded, and for cloudpickle's."""
    refs: set[str] = set()
    memo: dict[int, Any] = {}
    last: list[Any] = [None, None]  # the two values pushed last (strings)
    for op, arg, _ in pickletools.genops(blob):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, qual = arg.partition(" ")
            refs.add(_py3_ref(module, qual))
            last = [last[1], None]
        elif name == "STACK_GLOBAL":
            if isinstance(last[0], str) and isinstance(last[1], str):
                refs.add(_py3_ref(last[0], last[1]))
            last = [last[1], None]
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            last = [last[1], arg]
        elif name == "MEMOIZE":
            memo[len(memo)] = last[1]
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = last[1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            last = [last[1], memo.get(int(arg))]
        elif name not in ("FRAME", "PROTO"):
            last = [last[1], None]
    return tuple(sorted(refs))


def _py3_ref(module: str, qual: str) -> str:
    """Protocols 0-2 name Python 2's modules; pickle maps them on load."""
    module, qual = _compat_pickle.NAME_MAPPING.get((module, qual), (module, qual))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}:{qual}"


def unresolvable(refs: Iterable[str]) -> list[str]:
    """The references that no longer name a class or function, each with
    why (a missing module, a missing name)."""
    bad = []
    for ref in refs:
        module, _, qual = ref.partition(":")
        try:
            obj = importlib.import_module(module)
        except Exception as e:
            bad.append(f"{ref} (module {module!r} cannot be imported: "
                       f"{type(e).__name__}: {e})")
            continue
        for part in qual.split("."):
            if part == "<locals>":
                break  # pickled by value (cloudpickle): nothing to find
            try:
                obj = getattr(obj, part)
            except AttributeError:
                bad.append(f"{ref} (module {module!r} has no {qual!r})")
                break
    return bad


def loads(blob: bytes, pickler: str = "pickle", serializer=None) -> Any:
    if pickler == APPLICATION:
        if serializer is None:
            raise ValueError("the snapshot was made by the application's "
                             "serialize(), and the application no longer "
                             "defines serialize() and deserialize()")
        return serializer[1](blob)
    return pickle.loads(blob)
