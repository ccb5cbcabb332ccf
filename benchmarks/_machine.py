"""The ``machine:`` line every benchmark prints first, so runs on different
days (and machines) can be told apart."""

from __future__ import annotations

import os
import platform
import sqlite3


def machine_line(with_sqlite: bool = False) -> str:
    sqlite = f"sqlite={sqlite3.sqlite_version} " if with_sqlite else ""
    return (f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
            f"{sqlite}{platform.platform()}; load average {os.getloadavg()[0]:.2f}")
