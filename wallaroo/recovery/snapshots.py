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


def dumps(obj: Any, what: str) -> tuple[bytes, str]:
    """-> (blob, pickler name).  ``what`` names the state and key for the
    error a user sees when neither pickler can do it."""
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


def loads(blob: bytes) -> Any:
    return pickle.loads(blob)
