"""Pickling of state snapshots and partition keys.

Plain ``pickle`` first: it is the fastest and application classes resolve by
module name, since the application module is loaded under a stable name.
``cloudpickle`` only when plain pickle cannot (lambdas, classes defined inside
functions).  Either way ``pickle.loads`` reads the result back.
"""

from __future__ import annotations

import pickle
from typing import Any

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


def loads(blob: bytes, pickler: str = "pickle", serializer=None) -> Any:
    if pickler == APPLICATION:
        if serializer is None:
            raise ValueError("the snapshot was made by the application's "
                             "serialize(), and the application no longer "
                             "defines serialize() and deserialize()")
        return serializer[1](blob)
    return pickle.loads(blob)
