"""Keep a Wallaroo sink's outputs in a SQLite table, exactly once.

    python sqlite_receiver.py --listen 127.0.0.1:7002 --db outputs.db

Workers started with ``--resumable-sinks`` connect here (``--out
127.0.0.1:7002``); every output lands once in

    outputs(stream TEXT, n INTEGER, data BLOB, PRIMARY KEY (stream, n))

``n`` being its number in its stream, whatever crashes on either side.
``wallaroo.receiver.ResumableReceiver`` speaks the protocol; this file is
only the store: ``have`` (the outputs of a stream in the table), ``append``
(rows in the open transaction) and ``sync`` (commit: the ACKs follow).
The first line on stderr is ``listening on HOST:PORT``; SIGINT or SIGTERM
commits what arrived, sends the last ACKs and exits with a summary.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys

import trio

from wallaroo.receiver import ResumableReceiver


class SQLiteStore:
    """A ``wallaroo.receiver`` store: one row per output."""

    def __init__(self, path: str):
        # The receiver calls the store from one worker thread at a time,
        # not always the same one.
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
        self.db.execute("CREATE TABLE IF NOT EXISTS outputs (stream TEXT, n INTEGER, "
                        "data BLOB, PRIMARY KEY (stream, n))")
        self.db.commit()

    def have(self, stream: str) -> int:
        # Outputs are numbered from 0 without gaps: the next number is the count.
        (n,) = self.db.execute("SELECT coalesce(max(n) + 1, 0) FROM outputs "
                               "WHERE stream = ?", (stream,)).fetchone()
        return n

    def append(self, stream: str, first: int, outputs: list[bytes]) -> None:
        # OR REPLACE: an output numbered again (after a reconnect) replaces
        # the row, never adds one.
        self.db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?)",
                            [(stream, first + i, o) for i, o in enumerate(outputs)])

    def sync(self) -> None:
        self.db.commit()

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT stream, count(*) FROM outputs "
                                    "GROUP BY stream ORDER BY stream"))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


async def serve(receiver: ResumableReceiver, host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve, host, port)
        print(f"listening on {receiver.address}", file=sys.stderr, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", file=sys.stderr)
                receiver.stop()  # serve() returns once the last ACKs are out
                break


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:7002", metavar="HOST:PORT")
    ap.add_argument("--db", default="outputs.db", help="the SQLite file")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="a line per connection (HAVE, closing)")
    a = ap.parse_args()
    host, _, port = a.listen.rpartition(":")
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(message)s")
    store = SQLiteStore(a.db)
    receiver = ResumableReceiver(store)
    trio.run(serve, receiver, host, int(port))
    stats = receiver.statistics()
    print(f"received {plural(stats.outputs, 'output')} on "
          f"{plural(stats.connections, 'connection')} in {plural(stats.commits, 'commit')}; "
          f"{a.db} holds {store.counts()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
