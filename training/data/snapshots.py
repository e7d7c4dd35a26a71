"""Frozen labels and dataset snapshots for `rewards retrain`.

A decision's label is final once its window has closed, and it stays what it was when a model
first trained on it: an outcome that arrives later (a CRM replaying last month's redemptions) is
kept in the event store and counted by the join report, but it never relabels a snapshot already
trained on, so a model and the data it was trained on stay reproducible.

The ledger (``ledger_offers.parquet``, ``ledger_assignments.parquet`` in the snapshots folder)
holds every label ever frozen, keyed by decision and item, with the time it was frozen. A
snapshot is the set of closed decisions at an instant with their frozen labels; its id is a hash
of its content, so two retrains that see the same closed decisions see the same id (what makes
`rewards retrain` idempotent).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.decision_log import closes_at

KEYS = {"offers": ["decision_id", "reward_id"], "assignments": ["decision_id", "challenge_id"]}
LABELS = {"offers": ["redeemed", "converted", "spend", "outcome_timestamp"],
          "assignments": ["completed", "outcome_timestamp"]}
LATEST = "latest.json"
#: Per-day digests of what a build read (training/data/history.py writes it with the features)
INPUT_DIGEST = "input_digest.json"


@dataclass(frozen=True)
class Snapshot:
    """A dataset snapshot: its content hash, the instant it was cut, and its counts."""

    id: str
    as_of: str
    offers: int
    assignments: int
    newly_labelled: int
    frozen_reused: int
    open_left_out: int
    path: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _closed(frame: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series:
    """Rows whose label is final as of ``as_of``: labels count events before the end of the
    window and the store is read before ``as_of``, so a window ending at ``as_of`` is closed
    (the join report counts it labelled too)."""
    return closes_at(frame) <= as_of


def freeze(kind: str, frame: pd.DataFrame, ledger_dir: Path,
           as_of: pd.Timestamp, labelled_at: pd.Timestamp | None = None
           ) -> tuple[pd.DataFrame, dict[str, int]]:
    """The closed rows of ``frame`` with their labels frozen: rows the ledger already holds
    take the ledger's labels; newly closed rows are added to the ledger (labelled at
    ``as_of``, at the wall-clock time). Open rows are left out. Returns the rows and counts."""
    keys, labels = KEYS[kind], LABELS[kind]
    path = ledger_dir / f"ledger_{kind}.parquet"
    ledger = (pd.read_parquet(path) if path.is_file()
              else pd.DataFrame(columns=[*keys, *labels, "labelled_at", "as_of"]))
    closed = frame[_closed(frame, as_of)]
    index = pd.MultiIndex.from_frame(closed[keys])
    known = pd.MultiIndex.from_frame(ledger[keys]) if len(ledger) else pd.MultiIndex.from_tuples(
        [], names=keys)
    frozen = index.isin(known)
    out = closed.copy()
    if frozen.any():
        stored = ledger.set_index(keys)[labels].reindex(index[frozen])
        for col in labels:
            out.loc[out.index[frozen], col] = stored[col].to_numpy()
    # labelled_at: when the store was read for the labels (wall clock, what "late" compares
    # receipts with: an outcome received after it is not in the label; now when not given);
    # as_of: the instant the snapshot read the store as of (a simulation's clock may differ)
    new = closed[~frozen][[*keys, *labels]].assign(
        labelled_at=pd.Timestamp.now(tz="UTC") if labelled_at is None
        else pd.Timestamp(labelled_at), as_of=pd.Timestamp(as_of))
    if len(new):
        merged = pd.concat([ledger, new], ignore_index=True) if len(ledger) else new
        ledger_dir.mkdir(parents=True, exist_ok=True)
        merged.to_parquet(path.with_suffix(".tmp"), index=False)
        path.with_suffix(".tmp").replace(path)
    counts = {"newly_labelled": int((~frozen).sum()), "frozen_reused": int(frozen.sum()),
              "open_left_out": int(len(frame) - len(closed))}
    return out.reset_index(drop=True), counts


def labelled_at(ledger_dir: Path) -> pd.Series:
    """When each decision's label was frozen (earliest over its items), by decision id."""
    parts = []
    for kind in KEYS:
        path = ledger_dir / f"ledger_{kind}.parquet"
        if path.is_file():
            parts.append(pd.read_parquet(path, columns=["decision_id", "labelled_at"]))
    if not parts:
        return pd.Series(dtype="datetime64[us, UTC]")
    both = pd.concat(parts, ignore_index=True)
    return both.groupby("decision_id")["labelled_at"].min()


def content_hash(frames: dict[str, pd.DataFrame], inputs: str = "") -> str:
    """A hash of the rows and labels (order-independent) and of ``inputs`` (what their
    features derive from, :func:`inputs_through`): the dataset hash MLflow records."""
    h = hashlib.sha256()
    for kind in sorted(frames):
        frame = frames[kind]
        cols = [*KEYS[kind], "member_id", "event_timestamp", "propensity", *LABELS[kind]]
        part = frame[cols].sort_values(KEYS[kind], kind="stable").reset_index(drop=True)
        h.update(kind.encode())
        h.update(json.dumps(cols).encode())
        h.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
    if inputs:
        h.update(b"inputs" + inputs.encode())
    return h.hexdigest()[:16]


def _row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One uint64 per row over every column (in name order). Times and durations hash as
    integer microseconds and numbers as float64, whatever their dtype's unit or nullability (a
    pandas or parquet upgrade must not change every digest; integers beyond 2^53, which no
    amount or count reaches, would share a hash); values pandas cannot hash (a member's
    attributes dict) hash as their sorted JSON."""
    cols = sorted(frame.columns)
    part = frame[cols].copy()
    for c in cols:
        column = part[c]
        if isinstance(column.dtype, pd.DatetimeTZDtype) or column.dtype.kind == "M":
            utc = pd.to_datetime(column, utc=True).dt.tz_localize(None)
            part[c] = utc.to_numpy(dtype="datetime64[us]").view("int64")  # NaT: int64 min
        elif column.dtype.kind == "m":  # durations: microseconds too
            part[c] = column.to_numpy(dtype="timedelta64[us]").view("int64")
        elif pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(
                column.dtype):
            part[c] = column.astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
        elif column.dtype == object:
            try:
                pd.util.hash_array(column.to_numpy())
            except TypeError:
                part[c] = [json.dumps(v, sort_keys=True, default=str) for v in column]
    return pd.util.hash_pandas_object(part, index=False).to_numpy()


def _sum_hex(hashes: np.ndarray) -> str:
    """An order-independent digest: the wrapping sum of the row hashes."""
    return f"{int(hashes.sum(dtype=np.uint64)):016x}"


def _by_day(times: pd.Series, hashes: np.ndarray) -> dict[str, list[object]]:
    """{UTC day: [rows, digest]} ('' for rows without a time)."""
    utc = pd.to_datetime(times, utc=True)
    day = utc.dt.strftime("%Y-%m-%d").fillna("").to_numpy()
    rows = pd.DataFrame({"day": day, "h": hashes})
    return {str(d): [len(g), _sum_hex(g["h"].to_numpy())] for d, g in rows.groupby("day")}


def input_digest(members: pd.DataFrame, events: pd.DataFrame,
                 catalog: dict[str, pd.DataFrame]) -> dict[str, object]:
    """What a build's features derive from: the members by the UTC day they joined, the
    catalog, and the events by UTC day (rows, digest). A snapshot keeps the days up to its
    last decision's (:func:`inputs_through`): a history import changes the dataset's hash (a
    cron retrain trains on it instead of reporting nothing new); events of later days, and
    members who joined after, do not."""
    return {"members": _by_day(members["joined_at"], _row_hashes(members)),
            "catalog": {name: _sum_hex(_row_hashes(frame)) for name, frame in sorted(
                catalog.items())},
            "days": _by_day(events["event_timestamp"], _row_hashes(
                events.drop(columns=["received_at"], errors="ignore")))}


def inputs_through(digest: dict[str, object] | None, last: pd.Timestamp | None) -> str:
    """The part of a build's :func:`input_digest` that the features of rows decided up to
    ``last`` can depend on, as one string ('' without a digest: an older build)."""
    if not digest:
        return ""
    through = "" if last is None else pd.Timestamp(last).tz_convert("UTC").strftime("%Y-%m-%d")

    def upto(by_day: object) -> dict[str, object]:
        return {d: v for d, v in sorted(dict(by_day).items())  # type: ignore[call-overload]
                if d <= through}

    return json.dumps({"members": upto(digest["members"]), "catalog": digest["catalog"],
                       "days": upto(digest["days"])}, sort_keys=True)


def write_input_digest(features_dir: Path, digest: dict[str, object]) -> None:
    path = features_dir / INPUT_DIGEST
    path.with_suffix(".tmp").write_text(json.dumps(digest, sort_keys=True))
    path.with_suffix(".tmp").replace(path)


def read_input_digest(features_dir: Path) -> dict[str, object] | None:
    path = features_dir / INPUT_DIGEST
    return json.loads(path.read_text()) if path.is_file() else None


def take_snapshot(features_dir: Path, snapshots_dir: Path, as_of: pd.Timestamp,
                  labelled_at: pd.Timestamp | None = None) -> Snapshot:
    """Freeze the labels of the decisions in ``features_dir`` closed at ``as_of``, rewrite its
    ``offers.parquet``/``assignments.parquet`` with only those rows (what training reads), and
    keep a copy under ``snapshots_dir/<id>/``. ``labelled_at``: when the build read the
    store (its refresh watermark), so that an outcome received while the build ran counts
    as late rather than as neither labelled nor late."""
    as_of = pd.Timestamp(as_of)
    frames, totals = {}, {"newly_labelled": 0, "frozen_reused": 0, "open_left_out": 0}
    for kind in KEYS:
        frame = pd.read_parquet(features_dir / f"{kind}.parquet")
        frames[kind], counts = freeze(kind, frame, snapshots_dir, as_of, labelled_at)
        for k, v in counts.items():
            totals[k] += v
    stamps = [f["event_timestamp"] for f in frames.values() if len(f)]
    last = max(pd.Timestamp(t.max()) for t in stamps) if stamps else None
    snap_id = content_hash(frames, inputs_through(read_input_digest(features_dir), last))
    out = snapshots_dir / snap_id
    out.mkdir(parents=True, exist_ok=True)
    for kind, frame in frames.items():
        for target in (features_dir / f"{kind}.parquet", out / f"{kind}.parquet"):
            frame.to_parquet(target.with_suffix(".tmp"), index=False)
            target.with_suffix(".tmp").replace(target)
    snap = Snapshot(snap_id, as_of.isoformat(), len(frames["offers"]),
                    len(frames["assignments"]), path=str(out), **totals)
    (out / "manifest.json").write_text(json.dumps(snap.as_dict(), indent=2) + "\n")
    return snap


def read_latest(snapshots_dir: Path) -> dict[str, object] | None:
    """What the last `rewards retrain` did (its snapshot id, versions, verdicts), if any."""
    path = snapshots_dir / LATEST
    return json.loads(path.read_text()) if path.is_file() else None


def write_latest(snapshots_dir: Path, record: dict[str, object]) -> None:
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    tmp = snapshots_dir / f"{LATEST}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(snapshots_dir / LATEST)
