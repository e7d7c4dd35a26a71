"""One writer at a time in a data folder: `rewards retrain`, `rewards features build` and
`rewards train` rewrite the same feature files, snapshots and registry.

A cron retrain that runs longer than its interval, or an operator's `rewards features build`
started during one, would otherwise interleave parquet writes and register two candidates from
half-written features. The lock is an ``flock`` on ``<data>/jobs.lock``: the kernel releases it
when its holder dies, so a killed job never leaves the folder locked. The file names the holder
(job, pid, host, start) for the message the next caller gets. It guards one machine's folder;
jobs on several machines each have their own data folder (the shared stores, PostgreSQL and
Redis, take concurrent writers).

Nested use in one process (retrain builds features, then trains) re-enters the lock the process
already holds.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = "jobs.lock"
#: The exit code of a command that found another job holding the folder (EX_TEMPFAIL: cron
#: wrappers retry later instead of paging).
BUSY_EXIT = 75

_held: dict[Path, int] = {}  # lock path -> nesting depth in this process
_guard = threading.Lock()


class DataFolderBusy(RuntimeError):
    """Another job holds the data folder; says which, and since when."""

    def __init__(self, path: Path, holder: dict[str, object]) -> None:
        who = ", ".join(f"{k} {holder[k]}" for k in ("job", "pid", "host", "started")
                        if k in holder) or "unknown holder"
        super().__init__(f"another job is writing to {path.parent} ({who}); try again when it "
                         f"has finished (lock: {path})")
        self.holder = holder


def holder(path: Path) -> dict[str, object]:
    """What the lock file says of its current (or last) holder."""
    try:
        text = path.read_text()
        return dict(json.loads(text)) if text.strip() else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def exclusive(data_dir: Path, job: str) -> Iterator[None]:
    """Hold ``<data_dir>/jobs.lock`` for ``job``, or raise :class:`DataFolderBusy` at once
    (a cron job should not queue behind a long one)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = (data_dir / LOCK_FILE).resolve()
    with _guard:
        if _held.get(path):
            _held[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataFolderBusy(path, holder(path)) from None
        stamp = {"job": job, "pid": os.getpid(), "host": socket.gethostname(),
                 "started": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(stamp).encode(), 0)
        with _guard:
            _held[path] = 1
        try:
            yield
        finally:
            with _guard:
                _held.pop(path, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
