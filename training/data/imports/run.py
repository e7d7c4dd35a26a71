"""Streaming a members or events file into the event store, a chunk (one transaction) at a
time: `rewards import members|events FILE`, the simulator, and tests call ``import_file``."""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from serving.contract.events import EVENT_FIELDS
from training.data.imports.validate import (
    MAX_ATTRIBUTES,
    MEMBER_FIELDS,
    check_events,
    check_members,
)

if TYPE_CHECKING:
    from serving.stores.events import EventStore

Format = Literal["csv", "parquet"]
DEFAULT_CHUNK_ROWS = 100_000
_ALIASES = {"events": {"event_timestamp": "timestamp"}, "members": {"signup_date": "joined_at"}}
_REQUIRED_COLUMNS = {"events": ("event_type", "member_id", "timestamp"),
                     "members": ("member_id", "joined_at", "tier")}


@dataclass
class ImportSummary:
    """What an import did. ``duplicates``: events already stored (or repeated in the file);
    for members, profiles that were already identical."""

    kind: str
    file: str
    read: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rejects_file: str | None = None
    generated_ids: int = 0
    #: Values not stored: per column, cells of event types that do not have that field.
    ignored: dict[str, int] = field(default_factory=dict)
    #: Columns of the file that no event field matches (events only; members keep them all).
    unused_columns: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_format(path: Path, fmt: str | None = None) -> Format:
    """csv or parquet: ``fmt`` if given, else the file's suffix."""
    chosen = (fmt or path.suffix.lstrip(".")).lower()
    chosen = {"pq": "parquet", "parq": "parquet"}.get(chosen, chosen)
    if chosen not in ("csv", "parquet"):
        raise ValueError(f"{path.name}: cannot tell the format from the suffix "
                         f"{path.suffix!r}; pass --format csv or --format parquet")
    return chosen  # type: ignore[return-value]


def read_chunks(path: Path, fmt: Format, chunk_rows: int
                ) -> tuple[list[str], int | None, Iterator[pa.Table]]:
    """(column names, rows if known, the file's chunks of ``chunk_rows`` rows)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        source = pq.ParquetFile(path)
        names = list(source.schema_arrow.names)
        batches: Iterator[pa.RecordBatch] = source.iter_batches(batch_size=chunk_rows)
        total: int | None = source.metadata.num_rows
    else:
        import pyarrow.csv as pacsv

        with path.open(newline="", encoding="utf-8-sig") as handle:
            names = next(csv.reader(handle), [])
        if not names:
            raise ValueError(f"{path.name}: empty file (expected a header row)")
        batches = iter(pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names}, null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=True)))
        total = None
    return names, total, _rechunk(batches, chunk_rows)


def _rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def _columns(kind: str, path: Path, names: list[str]) -> dict[str, str]:
    """File column -> import column (trimmed, aliases applied); ValueError naming what is
    missing or ambiguous."""
    mapping = {name: _ALIASES[kind].get(name.strip(), name.strip()) for name in names}
    seen = Counter(mapping[name] for name in names)
    doubled = sorted(c for c, k in seen.items() if k > 1)
    if doubled:
        raise ValueError(f"{path.name}: column {doubled[0]!r} given twice (or with its alias)")
    missing = [c for c in _REQUIRED_COLUMNS[kind] if c not in seen]
    if missing:
        raise ValueError(f"{path.name}: missing column {missing[0]!r} (required: "
                         f"{', '.join(_REQUIRED_COLUMNS[kind])})")
    if kind == "members":
        extra = [c for c in seen if c not in MEMBER_FIELDS]
        if len(extra) > MAX_ATTRIBUTES:
            raise ValueError(f"{path.name}: {len(extra)} attribute columns; at most "
                             f"{MAX_ATTRIBUTES}")
        long = [c for c in extra if len(c) > 64]
        if long:
            raise ValueError(f"{path.name}: attribute column name {long[0][:20]!r}... longer "
                             "than 64 characters")
    return mapping


def rejects_path(path: Path) -> Path:
    """Where a file's rejects go by default: ``<stem>.rejects.csv`` beside it."""
    return path.with_name(f"{path.stem}.rejects.csv")


def import_file(kind: Literal["members", "events"], path: Path, store: EventStore, *,
                fmt: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                rejects: Path | None = None, progress: bool = False) -> ImportSummary:
    """Stream a members or events file into the store, a chunk (one transaction) at a time.

    The rejects file is replaced by this run's rejects, and not left behind when there are
    none. Events go through ``store.bulk_load()`` (deferred indexes on an empty store).
    """
    from contextlib import nullcontext

    from tqdm import tqdm

    t0 = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if chunk_rows < 1:
        raise ValueError(f"--chunk-rows: must be at least 1, got {chunk_rows}")
    names, total, chunks = read_chunks(path, file_format(path, fmt), chunk_rows)
    mapping = _columns(kind, path, names)
    target = rejects or rejects_path(path)
    target.unlink(missing_ok=True)
    summary = ImportSummary(kind, str(path))
    if kind == "events":
        known = {"event_id", "event_type", "member_id", "timestamp", "decision_id", *EVENT_FIELDS,
                 "properties"}
        summary.unused_columns = [c for c in names if mapping[c] not in known]
    original = {new: old for old, new in mapping.items()}
    ignored: Counter[str] = Counter()
    session = store.bulk_load() if kind == "events" else nullcontext(False)
    with session, tqdm(total=total, unit="rows", desc=f"import {kind}", disable=not progress,
                       leave=False) as bar:
        for chunk in chunks:
            table = chunk.rename_columns([mapping[c] for c in chunk.column_names])
            checked = (check_events if kind == "events" else check_members)(
                table, summary.read + 1)
            written = (store.import_events(checked.good) if kind == "events"
                       else store.upsert_members(checked.good))
            summary.read += table.num_rows
            summary.imported += written
            summary.duplicates += len(checked.good) - written
            summary.rejected += len(checked.rejects)
            summary.generated_ids += checked.generated_ids
            ignored.update(checked.ignored)
            if len(checked.rejects):
                checked.rejects.rename(columns=original).to_csv(
                    target, mode="a", index=False, header=summary.rejects_file is None)
                summary.rejects_file = str(target)
            bar.update(table.num_rows)
    summary.ignored = dict(sorted(ignored.items()))
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary


def import_events_file(path: Path, store: EventStore, **options: Any) -> ImportSummary:
    """`rewards import events FILE` without the CLI (tests, the simulator); see import_file."""
    return import_file("events", path, store, **options)


def import_members_file(path: Path, store: EventStore, **options: Any) -> ImportSummary:
    """`rewards import members FILE` without the CLI; see import_file."""
    return import_file("members", path, store, **options)
