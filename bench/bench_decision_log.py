"""CPU per logged decision in the SQLite event store: random (uuid4) vs time-ordered (UUIDv7) ids.

Every recommendation writes one `decisions` row and one `decision_items` row per item shown, in
the decision-writer thread of each API worker (group-committed). That thread competes with the
request path for the same cores, so its CPU per decision matters at 500 requests/s.

The store is first filled with ``--prefill`` decisions of the same kind, then ``--batches``
batches of ``--batch`` decisions (3 rewards + 3 challenges each) are timed with
``time.process_time``; the two kinds alternate ``--repeats`` times (this machine's speed drifts).

    .venv/bin/python bench/bench_decision_log.py --prefill 100000
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from serving.contract.events import DecisionItem, DecisionRecord
from serving.stores.events import open_event_store
from serving.decisioning.ids import new_decision_id

KINDS: dict[str, Callable[[], str]] = {"uuid4": lambda: uuid.uuid4().hex,
                                       "uuid7": new_decision_id}


def record(decision_id: str, member_id: str) -> DecisionRecord:
    items = [DecisionItem(item_type="reward", item_id=f"R{i:02d}", rank=i, score=0.5,
                          shown_probability=0.9, cost=3.0) for i in range(3)]
    items += [DecisionItem(item_type="challenge", item_id=f"C{i:02d}", rank=i, score=0.7,
                           shown_probability=0.9, target=5.0) for i in range(3)]
    return DecisionRecord(decision_id=decision_id, member_id=member_id,
                          created_at=datetime.now(UTC), channel="app",
                          model_versions={"reward": "2", "difficulty": "2"}, items=items,
                          flags={"degraded": False})


def run(kind: str, prefill: int, batches: int, batch: int, folder: str) -> tuple[float, float]:
    """(CPU µs, wall µs) per decision logged after ``prefill`` decisions."""
    new_id = KINDS[kind]
    store = open_event_store(f"sqlite:///{tempfile.mkdtemp(dir=folder)}/events.db")
    try:
        for _ in range(0, prefill, 500):
            store.log_decisions([record(new_id(), str(random.randint(1, 100_000)))
                                 for _ in range(500)])
        todo = [[record(new_id(), str(random.randint(1, 100_000))) for _ in range(batch)]
                for _ in range(batches)]
        cpu, wall = time.process_time(), time.perf_counter()
        for decisions in todo:
            store.log_decisions(decisions)
        n = batches * batch
        return ((time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for kind in KINDS:
                cpu, wall = run(kind, args.prefill, args.batches, args.batch, folder)
                print(f"{kind}: prefill {args.prefill:,}, batches of {args.batch}: "
                      f"CPU {cpu:.0f} µs, wall {wall:.0f} µs per decision", flush=True)


if __name__ == "__main__":
    main()
