"""Worker logging: stderr, one line per event, with the worker's name.

The ``ready`` line is written bare (``ready worker=... sources=...``) so
scripts and tests can wait for it with a plain ``startswith("ready")``.
"""

from __future__ import annotations

import logging
import sys
import time


class WorkerFormatter(logging.Formatter):
    def __init__(self, worker: str):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if getattr(record, "bare", False):
            return msg
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = (f"{t}.{int(record.msecs):03d} [{self.worker}] "
                f"{record.levelname.lower()}: {msg}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(worker: str, level: str = "INFO") -> logging.Logger:
    log = logging.getLogger("wallaroo")
    for h in list(log.handlers):
        log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(WorkerFormatter(worker))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
    return log
