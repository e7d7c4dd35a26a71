"""The state `rewards serve --workers N` shares between its workers (serving/worker_group.py).

Two handles on one file stand in for two workers: they must see one bucket per key and one
reload counter. A real multi-process check is in tests/integration/test_workers.py.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from serving import worker_group
from serving.api.auth import TokenBuckets
from serving.worker_group import BUCKETS, PROBES, STALE_AFTER, WorkerGroup, key_hash
from serving.workers import MAX_BACKOFF, QUICK_DEATH_SECONDS, restart_pause


@pytest.fixture
def pair() -> Iterator[tuple[WorkerGroup, WorkerGroup]]:
    fd, path = worker_group.create_file(2)
    a, b = WorkerGroup(path, 0), WorkerGroup(path, 1)
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        os.close(fd)


def test_the_file_is_unlinked_and_reached_through_proc() -> None:
    fd, path = worker_group.create_file(3)
    try:
        assert str(path) == f"/proc/{os.getpid()}/fd/{fd}"
        assert os.fstat(fd).st_nlink == 0  # nothing to clean up, however the supervisor ends
        group = WorkerGroup(path, 2)
        assert group.workers == 3 and group.generation() == 0
        group.close()
        with pytest.raises(ValueError, match="worker slot 3"):
            WorkerGroup(path, 3)
    finally:
        os.close(fd)


def test_shared_bucket_matches_the_in_process_one(pair) -> None:  # noqa: ANN001
    """Same answers as TokenBuckets for any sequence, whichever worker takes the token."""
    a, b = pair
    local = TokenBuckets()
    rng = np.random.default_rng(3)
    now = 100.0
    for _ in range(400):
        now += float(rng.exponential(0.3))
        key = f"k{rng.integers(3)}"
        rate = {"k0": 2.0, "k1": 0.5, "k2": 10.0}[key]
        worker = a if rng.random() < 0.5 else b
        assert worker.take(key, rate, now=now) == pytest.approx(local.take(key, rate, now=now))


def test_two_workers_share_one_budget_per_key(pair) -> None:  # noqa: ANN001
    a, b = pair
    answers = [(a if i % 2 else b).take("key", 5.0, now=0.0) for i in range(10)]
    assert sum(w == 0.0 for w in answers) == 5  # not 5 per worker
    assert a.take("key", 5.0, now=0.2) == 0.0  # one token refilled after 0.2 s at 5/s
    assert b.take("key", 5.0, now=0.2) == pytest.approx(0.2)
    assert b.take("another", 5.0, now=0.2) == 0.0


def test_crowded_slots_reuse_the_least_recently_used(pair) -> None:  # noqa: ANN001
    """Keys sharing one home slot fill the probe window; the next key takes the least recently
    used bucket (its key restarts full), never a busier one."""
    a, _ = pair
    home = key_hash("anchor") % BUCKETS
    same_home = [k for k in (f"c{i}" for i in range(400_000)) if key_hash(k) % BUCKETS == home]
    crowd = same_home[:PROBES]
    assert len(crowd) == PROBES
    slow = 1e-6  # no refill within the test: an emptied bucket stays empty
    assert a.take("anchor", slow, now=0.0) == 0.0
    for t, k in enumerate(crowd[:-1], start=1):  # fill the other PROBES - 1 slots
        assert a.take(k, slow, now=float(t)) == 0.0
    assert a.take("anchor", slow, now=7.5) > 0  # its own (empty) bucket is found again
    # the window is full: the newcomer evicts the least recently used bucket (crowd[0], t=1)
    assert a.take(crowd[-1], slow, now=8.0) == 0.0
    for k in ["anchor", *crowd[1:]]:  # every more recently used key kept its (empty) bucket
        assert a.take(k, slow, now=9.0) > 0
    assert a.take(crowd[0], slow, now=10.0) == 0.0  # the evicted one restarts full


def test_reload_generation_and_live_workers(pair) -> None:  # noqa: ANN001
    a, b = pair
    assert a.live_workers() == []  # nobody joined yet
    a.join(0)
    b.join(0)
    assert {seen for _, seen in a.live_workers()} == {0}
    generation = a.request_reload()
    assert generation == 1 and b.generation() == 1
    a.mark_seen(generation)
    assert sorted(seen for _, seen in b.live_workers()) == [0, 1]
    b.mark_seen(b.generation())
    assert b.seen() == 1
    b.mark_seen(0)  # a follower finishing an older reload late never moves back
    assert b.seen() == 1
    later = time.monotonic() + STALE_AFTER + 1
    assert b.live_workers(now=later) == []  # silent for longer than STALE_AFTER: not waited for
    assert len(a.live_workers(now=time.monotonic() + STALE_AFTER / 2)) == 2
    b.leave()  # a worker shutting down frees its slot at once
    assert [pid for pid, _ in a.live_workers()] == [os.getpid()]
    assert a.slot(1) == (0, 0, 0.0)


def test_a_worker_that_joined_mid_reload_still_applies_it(pair) -> None:  # noqa: ANN001
    a, b = pair
    loaded = b.generation()  # read before loading its models
    a.request_reload()  # asked for while b was still loading
    b.join(loaded)
    assert b.seen() < b.generation()  # so b's follower applies it


def test_a_stopped_lock_holder_does_not_hang_the_others(pair) -> None:  # noqa: ANN001
    import fcntl

    a, _ = pair
    other = os.open(a.path, os.O_RDWR)  # another open file: a peer holding the lock
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        began = time.monotonic()
        assert a.take("k", 5.0, now=1.0) == 0.0  # goes ahead after LOCK_WAIT
        assert time.monotonic() - began < 1.0 and a.lock_timeouts == 1
    finally:
        os.close(other)
    assert a.take("k", 5.0, now=1.0) == 0.0 and a.lock_timeouts == 1  # lock free again


def test_a_dead_worker_is_not_waited_for(pair) -> None:  # noqa: ANN001
    import subprocess
    import sys

    a, b = pair
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    a.join(0)
    worker_group.WORKER.pack_into(b._map, b._slot_at(1), int(dead.stdout), 0, time.monotonic())
    assert [pid for pid, _ in a.live_workers()] == [os.getpid()]  # fresh beat, gone process


def _take_many(path: str, n: int, ready: mp.Barrier, out: mp.Queue) -> None:
    group = WorkerGroup(path, 1)
    ready.wait(120)  # both processes imported and attached: drain together
    out.put(sum(group.take("shared", 20_000.0, now=5.0) == 0.0 for _ in range(n)))


def test_processes_do_not_race_on_a_bucket(pair) -> None:  # noqa: ANN001
    """Two processes draining one bucket at the same instant (no refill) get exactly its burst
    between them: no update is lost under the file lock."""
    a, _ = pair
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    ready = ctx.Barrier(2)
    procs = [ctx.Process(target=_take_many, args=(str(a.path), 15_000, ready, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    granted = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(granted) == 20_000  # burst = one second's worth at 20,000/s
    assert min(granted) > 0  # both took part


def test_restart_pause_backs_off_only_for_quick_deaths() -> None:
    assert restart_pause(0.0, lived=QUICK_DEATH_SECONDS + 1) == 0.0
    pauses, pause = [], 0.0
    for _ in range(8):
        pause = restart_pause(pause, lived=0.5)
        pauses.append(pause)
    assert pauses[:4] == [1.0, 2.0, 4.0, 8.0] and pauses[-1] == MAX_BACKOFF
    assert restart_pause(MAX_BACKOFF, lived=3600) == 0.0  # a long life resets it
