"""JSON values in table ``meta`` that recovery trusts (the membership, the
state of live moves), each saved with a checksum over its body and its key,
so a damaged value is refused rather than routed by."""

from __future__ import annotations

import json
import sqlite3

from .errors import CorruptionError
from .records import control_checksum

LIVE_MOVES = "live_moves"  # runtime/live_moves.py


def checked_text(key: str, body: dict) -> str:
    """``body`` as saved under ``key``: its JSON with a checksum."""
    return json.dumps({**body, "checksum": control_checksum(
        key, json.dumps(body, sort_keys=True))}, sort_keys=True)


def parse_checked(key: str, text: str, path: str, what: str) -> dict:
    try:
        body = json.loads(text)
        cs = body.pop("checksum")
        if control_checksum(key, json.dumps(body, sort_keys=True)) != cs:
            raise ValueError("checksum")
        return body
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptionError(f"{path}: {what} in table meta failed its "
                              f"checksum; refusing to run on damaged state") from None


def read_checked(conn: sqlite3.Connection, path: str, key: str,
                 what: str | None = None) -> dict | None:
    """The value saved under ``key`` (None: none is)."""
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    if row is None:
        return None
    return parse_checked(key, row[0], path, what or f"the value {key!r}")
