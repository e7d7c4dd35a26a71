"""State shared by the API workers of one `rewards serve --workers N` on one machine.

Two facts must hold for the server as a whole, not per process:

- **A key's rate limit.** Token buckets in each worker's memory would let a key through up to N
  times its rate (the kernel spreads connections over the workers).
- **A model reload.** ``POST /v1/admin/reload`` reaches one worker. The others must reload too,
  and the answer should only say "done" once they have.

The supervisor creates one small file on a memory filesystem (``/dev/shm`` where there is one)
and hands its path and a slot number to every worker it starts, restarts included (Linux only,
like ``serving.workers``). Each worker maps the file. Writes that must not interleave (bucket updates, the reload counter) hold an
``flock`` on it: the kernel releases that lock when its holder dies, so a worker killed with
SIGKILL in the middle of an update cannot wedge the others (a semaphore would stay taken).

Layout (native byte order, 8-byte aligned fields):

- header: ``generation`` (u64, reload requests so far), ``workers`` (u64);
- one slot per worker: ``pid`` (u64), ``seen`` (u64, the generation it last applied),
  ``beat`` (f64, monotonic time of its last heartbeat);
- ``BUCKETS`` token buckets: ``key`` (u64 hash of the key id, 0 = free), ``tokens`` (f64),
  ``last`` (f64, monotonic time). CLOCK_MONOTONIC is system-wide, so every worker reads the
  same clock.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path

HEADER = struct.Struct("=QQ")
WORKER = struct.Struct("=QQd")
BUCKET = struct.Struct("=Qdd")
BUCKETS = 4096
#: A bucket is looked for in this many consecutive slots; when all are taken by other keys, the
#: least recently used of them is reused (that key restarts with a full bucket: a brief
#: over-allowance, only when more than a few thousand keys are active at once).
PROBES = 8
#: Workers write a heartbeat this often; one silent for ``STALE_AFTER`` seconds is not waited for.
HEARTBEAT_SECONDS = 0.25
STALE_AFTER = 5.0
#: Longest wait for the lock (held for microseconds by a running peer).
LOCK_WAIT = 0.05


def _size(workers: int) -> int:
    return HEADER.size + workers * WORKER.size + BUCKETS * BUCKET.size


def create_file(workers: int) -> tuple[int, Path]:
    """The shared file for ``workers`` workers, zeroed: (open fd, path the workers open).

    The file is unlinked at once and reached through ``/proc/<supervisor>/fd/<fd>``, so nothing
    is left behind however the supervisor ends (its workers end with it, PR_SET_PDEATHSIG).
    """
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, name = tempfile.mkstemp(prefix="rewards-workers-", dir=folder)
    os.unlink(name)
    os.ftruncate(fd, _size(workers))
    os.pwrite(fd, HEADER.pack(0, workers), 0)
    return fd, Path(f"/proc/{os.getpid()}/fd/{fd}")


def key_hash(key_id: str) -> int:
    """A stable (not per-process salted, unlike ``hash()``) non-zero 64-bit id of a key."""
    return int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(), "little") | 1


class WorkerGroup:
    """One worker's view of the shared file."""

    def __init__(self, path: Path, index: int) -> None:
        self.path, self.index = Path(path), index
        self._fd = os.open(self.path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, 0)
        _, self.workers = HEADER.unpack_from(self._map, 0)
        if not 0 <= index < self.workers:
            raise ValueError(f"worker slot {index} outside 0..{self.workers - 1}")
        self._buckets_at = HEADER.size + self.workers * WORKER.size
        self._hashes: dict[str, int] = {}
        self._locked = False
        self.lock_timeouts = 0  # updates made without the lock (see __enter__)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    # -- locking -------------------------------------------------------------------------------

    def __enter__(self) -> WorkerGroup:
        """Take the lock, waiting at most ``LOCK_WAIT`` seconds: a peer stopped while holding
        it (SIGSTOP, a frozen cgroup) must not hang every worker's event loop. Past that, the
        update goes ahead unlocked: at worst one token is spent twice."""
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._locked = True
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._locked = False
                    self.lock_timeouts += 1
                    return self
                time.sleep(0.0002)

    def __exit__(self, *exc: object) -> None:
        if self._locked:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- workers and reloads -------------------------------------------------------------------

    def _slot_at(self, i: int) -> int:
        return HEADER.size + i * WORKER.size

    def generation(self) -> int:
        return HEADER.unpack_from(self._map, 0)[0]

    def join(self, generation: int) -> None:
        """Claim this worker's slot once it serves. ``generation`` is the one read *before* it
        loaded its champions: a reload asked for during the load is still applied after."""
        WORKER.pack_into(self._map, self._slot_at(self.index), os.getpid(), generation,
                         time.monotonic())

    def leave(self) -> None:
        """Free the slot at shutdown, so that reloads do not wait for a worker that is gone."""
        WORKER.pack_into(self._map, self._slot_at(self.index), 0, 0, 0.0)

    def mark_seen(self, generation: int) -> None:
        """This worker has applied every reload up to ``generation`` (never moves back)."""
        pid, seen, _ = WORKER.unpack_from(self._map, self._slot_at(self.index))
        WORKER.pack_into(self._map, self._slot_at(self.index), os.getpid(),
                         max(seen, generation), time.monotonic())

    def slot(self, i: int) -> tuple[int, int, float]:
        """(pid, generation seen, last beat) of worker ``i``; pid 0 = not serving."""
        return WORKER.unpack_from(self._map, self._slot_at(i))

    def heartbeat(self) -> None:
        pid, seen, _ = WORKER.unpack_from(self._map, self._slot_at(self.index))
        WORKER.pack_into(self._map, self._slot_at(self.index), pid, seen, time.monotonic())

    def seen(self) -> int:
        return WORKER.unpack_from(self._map, self._slot_at(self.index))[1]

    def request_reload(self) -> int:
        """Ask every worker to reload; returns the generation they must reach."""
        with self:
            generation = self.generation() + 1
            HEADER.pack_into(self._map, 0, generation, self.workers)
        return generation

    def live_workers(self, now: float | None = None) -> list[tuple[int, int]]:
        """(pid, generation seen) of every worker that beat within ``STALE_AFTER`` seconds."""
        now = time.monotonic() if now is None else now
        out = []
        for i in range(self.workers):
            pid, seen, beat = self.slot(i)
            if pid and now - beat <= STALE_AFTER and _alive(pid):
                out.append((pid, seen))
        return out

    # -- rate limits ---------------------------------------------------------------------------

    def take(self, key_id: str, rate: float, now: float | None = None) -> float:
        """Spend one token of ``key_id``'s bucket, shared by every worker.

        Same contract as :class:`serving.api.auth.TokenBuckets`: 0.0 if allowed, else the seconds
        until a token is available; ``rate`` tokens a second, bursts of one second's worth.
        """
        h = self._hashes.get(key_id)
        if h is None:
            if len(self._hashes) > 10_000:
                self._hashes.clear()
            h = self._hashes[key_id] = key_hash(key_id)
        burst = max(rate, 1.0)
        with self:
            now = time.monotonic() if now is None else now
            at = self._find(h)
            key, tokens, last = BUCKET.unpack_from(self._map, at)
            if key != h:
                tokens, last = burst, now
            tokens = min(burst, tokens + max(0.0, now - last) * rate)
            if tokens >= 1.0:
                BUCKET.pack_into(self._map, at, h, tokens - 1.0, now)
                return 0.0
            BUCKET.pack_into(self._map, at, h, tokens, now)
            return (1.0 - tokens) / rate

    def _find(self, h: int) -> int:
        """Offset of ``h``'s bucket: its own, else a free one, else the least recently used."""
        start = h % BUCKETS
        oldest_at, oldest = -1, float("inf")
        for step in range(PROBES):
            at = self._buckets_at + ((start + step) % BUCKETS) * BUCKET.size
            key, _, last = BUCKET.unpack_from(self._map, at)
            if key == h or key == 0:
                return at
            if last < oldest:
                oldest_at, oldest = at, last
        return oldest_at


def _alive(pid: int) -> bool:
    """A worker killed outright frees no slot: do not wait for its heartbeat to go stale."""
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


_current: WorkerGroup | None = None


def attach(path: Path, index: int) -> WorkerGroup:
    """Called by a worker process before its app is built (see ``serving.workers``)."""
    global _current
    _current = WorkerGroup(path, index)
    return _current


def current() -> WorkerGroup | None:
    """This process's group, or None when the server runs as a single process."""
    return _current
