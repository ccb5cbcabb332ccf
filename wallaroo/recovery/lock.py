"""One process per worker database: an exclusive ``flock`` on a lock file
beside it.  The kernel drops the lock when the process dies, SIGKILL
included, so a restarted worker never finds a stale lock."""

from __future__ import annotations

import fcntl
import os

from .errors import StoreLocked


class WorkerLock:
    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise StoreLocked(
                f"{self.path} is held by another process{holder}: two "
                f"processes must never run the same worker; stop the other "
                f"one or give this worker another --name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid else ""
