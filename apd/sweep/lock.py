"""One sweep driver per output folder: an exclusive `flock` on `OUT/.lock` for the driver's lifetime.

The kernel drops the lock when the holder's process ends, however it ends (SIGKILL included), so a
stale lock file never blocks a resume. The file holds the holder's pid, host and start time, which
a refused driver (and `apd status`) names. The descriptor is close-on-exec, so the Ray processes a
driver starts do not inherit the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apd.errors import ApdError

LOCK_FILE = ".lock"
RETRY_S = 1.0
"""How long a driver retries a busy lock: `apd status` takes it shared for an instant."""


class LockBusy(ApdError):
    """Another sweep driver holds OUT."""


@dataclass(frozen=True)
class Holder:
    pid: int | None
    host: str | None
    since: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "another sweep driver"
        return f"the sweep driver pid {self.pid} on host {self.host} since {self.since}"


def read_holder(out: Path) -> Holder:
    try:
        data: dict[str, Any] = json.loads((out / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return Holder(None, None, None)
    return Holder(data.get("pid"), data.get("host"), data.get("since"))


def holder_if_locked(out: Path) -> Holder | None:
    """Who holds OUT's lock now (None when no driver does); takes the lock shared for an instant."""
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(out)
    finally:
        os.close(fd)  # also releases a lock we got
    return None


class SweepLock:
    """`with SweepLock(out):` holds OUT for one driver, or raises `LockBusy` naming the holder."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.fd: int | None = None

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        path = self.out / LOCK_FILE
        deadline = time.monotonic() + RETRY_S
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise LockBusy(f"{self.out}: in use by {read_holder(self.out).describe()}") from None
            # the file we locked must still be the one at `path` (no one replaced it meanwhile)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        since = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
