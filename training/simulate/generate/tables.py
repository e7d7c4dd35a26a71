"""Arrow schemas of the world files and a chunked parquet writer.

Columns are built straight from numpy arrays (strings from small code arrays with `take`), so a
chunk never materializes millions of Python string objects; this is what keeps 1M members within a
few GiB.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TIMESTAMP = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        ("member_id", pa.int64()),
        ("event_timestamp", TIMESTAMP),
        ("event_type", pa.string()),
        ("amount", pa.float64()),
        ("category", pa.string()),
        ("points", pa.int64()),
        ("reward_id", pa.string()),
    ]
)
OFFERS_SCHEMA = pa.schema(
    [
        ("offer_id", pa.int64()),
        ("member_id", pa.int64()),
        ("event_timestamp", TIMESTAMP),
        ("reward_id", pa.string()),
        ("treated", pa.bool_()),
        ("propensity", pa.float64()),
        ("redeemed", pa.int8()),
        ("converted", pa.int8()),
        ("spend", pa.float64()),
        ("outcome_timestamp", TIMESTAMP),
    ]
)
ASSIGNMENTS_SCHEMA = pa.schema(
    [
        ("assignment_id", pa.int64()),
        ("member_id", pa.int64()),
        ("event_timestamp", TIMESTAMP),
        ("challenge_id", pa.string()),
        ("target", pa.float64()),
        ("propensity", pa.float64()),
        ("completed", pa.int8()),
        ("outcome_timestamp", TIMESTAMP),
    ]
)
TRUTH_OFFERS_SCHEMA = pa.schema(
    [
        ("offer_id", pa.int64()),
        ("p_redeem", pa.float64()),
        ("p_convert_offer", pa.float64()),
        ("p_convert_control", pa.float64()),
        ("basket_value", pa.float64()),
        ("true_uplift", pa.float64()),
        ("true_incremental_value", pa.float64()),
    ]
)
TRUTH_ASSIGNMENTS_SCHEMA = pa.schema(
    [("assignment_id", pa.int64()), ("p_complete", pa.float64())]
)


def labels(codes: np.ndarray, vocabulary: tuple[str, ...] | list[str]) -> pa.Array:
    """String column from integer codes; code -1 means '' (the contract's empty value)."""
    dictionary = pa.array(["", *vocabulary], type=pa.string())
    return dictionary.take(pa.array(np.asarray(codes, dtype=np.int32) + 1))


def timestamps(micros: np.ndarray) -> pa.Array:
    """UTC microsecond timestamps from int64 microseconds since the epoch."""
    return pa.array(np.asarray(micros, dtype=np.int64), type=TIMESTAMP)


@dataclass
class EventColumns:
    """Events as parallel numpy arrays; strings stay codes until written."""

    member_id: np.ndarray  # int64
    ts: np.ndarray  # int64 microseconds
    event_type: np.ndarray  # int codes into EVENT_TYPES
    amount: np.ndarray  # float64
    category: np.ndarray  # int codes into CATEGORIES, -1 for ''
    points: np.ndarray  # int64
    reward: np.ndarray  # int codes into the reward catalog, -1 for ''

    @classmethod
    def build(
        cls,
        member_id: np.ndarray,
        ts: np.ndarray,
        event_type: int,
        *,
        amount: np.ndarray | None = None,
        category: np.ndarray | None = None,
        points: np.ndarray | int = 0,
        reward: np.ndarray | None = None,
    ) -> EventColumns:
        """Events of one type; omitted columns take the contract's empty values."""
        n = member_id.size
        return cls(
            member_id=np.asarray(member_id, dtype=np.int64),
            ts=np.asarray(ts, dtype=np.int64),
            event_type=np.full(n, event_type, dtype=np.int8),
            amount=np.zeros(n) if amount is None else np.asarray(amount, dtype=np.float64),
            category=np.full(n, -1, np.int16) if category is None else category.astype(np.int16),
            points=np.broadcast_to(np.asarray(points, dtype=np.int64), (n,)).copy(),
            reward=np.full(n, -1, np.int16) if reward is None else reward.astype(np.int16),
        )

    @classmethod
    def concat(cls, parts: list[EventColumns]) -> EventColumns:
        """Concatenate batches, then order by (member_id, timestamp, event type)."""
        merged = cls(
            **{
                f.name: np.concatenate([getattr(part, f.name) for part in parts])
                for f in fields(cls)
            }
        )
        order = np.lexsort((merged.event_type, merged.ts, merged.member_id))
        return cls(**{f.name: getattr(merged, f.name)[order] for f in fields(cls)})

    def select(self, mask: np.ndarray) -> EventColumns:
        """The rows where `mask` holds."""
        return EventColumns(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def to_table(
        self,
        event_types: tuple[str, ...],
        categories: tuple[str, ...],
        reward_ids: list[str],
    ) -> pa.Table:
        """The `events.parquet` table of this batch."""
        return pa.Table.from_arrays(
            [
                pa.array(self.member_id),
                timestamps(self.ts),
                labels(self.event_type, event_types),
                pa.array(self.amount),
                labels(self.category, categories),
                pa.array(self.points),
                labels(self.reward, reward_ids),
            ],
            schema=EVENTS_SCHEMA,
        )


class ParquetSink:
    """Append chunk tables to one parquet file; writes an empty file with the schema if unused."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is None:
            pq.write_table(self.schema.empty_table(), self.path, compression="zstd")
        else:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
