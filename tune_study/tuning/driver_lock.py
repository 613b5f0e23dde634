"""One driver per study folder: an exclusive lock held for the driver's whole life.

``fcntl.flock`` on ``<study>/driver.lock``: the kernel releases it when the process dies, however it
dies (kill -9 included), so a crashed driver never blocks ``--resume``. The file descriptor is not
inherited by the processes Ray starts (Python opens files non-inheritable), so Ray's workers cannot
keep a dead driver's lock alive. The file holds who took it (pid, host, start time, command) so a
refused second driver can name the holder.

On shared storage the lock is only as good as the file system's: NFSv4 and Lustre honour flock
between machines (NFSv3 only with a working lock manager), SMB and FUSE mounts may not, and an
object store (``storage_path: s3://...``) has no locks at all. The lock is taken in the local study
folder (``--results-dir``), so two drivers on two machines that share a ``storage_path`` but not a
results folder are not kept apart: give each study its own name.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import StudyError

LOCK_FILE = "driver.lock"


class DriverLock:
    """``with DriverLock(study_dir):`` — StudyError (one line, naming the holder) if another driver
    holds it. Creates the study folder if needed."""

    def __init__(self, study_dir: str | Path):
        self.path = Path(study_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "DriverLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StudyError(f"--results-dir: cannot write to {self.path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StudyError(f"{self.path.parent}: another driver is running this study ({holder}); "
                             "wait for it to finish, or stop it, then use --resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(sys.argv)}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> str | None:
        """Who holds the lock now (None: nobody), without creating the lock file."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        finally:
            os.close(fd)   # (releases the probe's own lock, if it got one)
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
