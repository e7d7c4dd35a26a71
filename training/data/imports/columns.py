"""Reading table columns for an import: arrow arrays in, numpy arrays out, and the rules a cell
must follow. Pure and vectorized: no Python per cell except for rare column types.

Conventions (README, "Importing a program's data"): empty cells are missing values; text is
trimmed; ids read as numbers become text without ``.0``; times are ISO-8601 (a date, or a time
with or without an offset: naive means UTC) or ``YYYYMMDD``, years 1970-2099 as written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from serving.contract.events import FIRST_YEAR, LAST_YEAR


@dataclass(frozen=True)
class Rule:
    """What JSON Schema says of one field: its type, bounds, lengths and pattern."""

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None

    @classmethod
    def of(cls, prop: dict[str, Any]) -> Rule:
        prop = next((p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"), prop)
        return cls(prop.get("type", "string"), prop.get("minimum"), prop.get("maximum"),
                   prop.get("exclusiveMinimum"), prop.get("exclusiveMaximum"),
                   prop.get("minLength"), prop.get("maxLength"), prop.get("pattern"))


@dataclass
class Checked:
    """One validated chunk: the rows to store (the store's column names) and the rejects."""

    good: pd.DataFrame
    rejects: pd.DataFrame  # row, field, reason, then the row's original values
    ignored: Counter[str] = field(default_factory=Counter)
    generated_ids: int = 0


class Errors:
    """The first problem of each row, in check order."""

    def __init__(self, n: int) -> None:
        self.ok = np.ones(n, dtype=bool)
        self.field = np.full(n, None, dtype=object)
        self.reason = np.full(n, None, dtype=object)

    def fail(self, mask: np.ndarray, name: str, reason: str) -> None:
        hit = mask & self.ok
        self.field[hit] = name
        self.reason[hit] = reason
        self.ok &= ~mask


def rejects(table: pa.Table, errors: Errors, first_row: int) -> pd.DataFrame:
    """The rejected rows: row number in the file (1-based), field, reason, original values."""
    bad = np.flatnonzero(~errors.ok)
    frame = pd.DataFrame({"row": bad + first_row, "field": errors.field[bad],
                          "reason": errors.reason[bad]})
    if len(bad):
        original = table.take(pa.array(bad)).to_pandas()
        frame = pd.concat([frame, original.set_axis(
            [c if c not in frame else f"{c}_" for c in original.columns], axis=1)], axis=1)
    return frame


def _strings(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """As trimmed text, empty as null; integers without ``.0`` (ids read as numbers)."""
    if pa.types.is_floating(col.type):
        values = col.to_numpy(zero_copy_only=False)
        whole = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 2.0**53)
        text = np.array([None if np.isnan(v) else (str(int(v)) if w else repr(float(v)))
                         for v, w in zip(values, whole, strict=True)], dtype=object)
        col = pa.chunked_array([pa.array(text, pa.string())])
    elif not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = col.cast(pa.string())
    col = pc.utf8_trim_whitespace(col)
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def _mask(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean arrow array (nulls false) as numpy."""
    return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


@dataclass
class Text:
    """A text column, checked in arrow (no Python string per cell until the good rows are
    taken): trimmed, empty cells missing."""

    array: pa.ChunkedArray
    present: np.ndarray

    def values(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The cells (of ``rows``) as an object array, None when missing."""
        array = self.array if rows is None else self.array.take(pa.array(rows, pa.int64()))
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=object)


def text_column(col: pa.ChunkedArray) -> Text:
    array = _strings(col)
    return Text(array, _mask(array.is_valid()))


def missing_text(n: int) -> Text:
    return Text(pa.chunked_array([pa.nulls(n, pa.string())]), np.zeros(n, dtype=bool))


def number_column(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, NaN when missing; cells that are not numbers)."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return values, np.zeros(len(values), dtype=bool)
    text = text_column(col)
    if pa.types.is_boolean(col.type):  # a boolean is not a number (as in the API)
        return np.full(len(col), np.nan), text.present
    values = pd.to_numeric(pd.Series(text.values(), dtype=object), errors="coerce")
    values = values.to_numpy(dtype=float)
    return values, text.present & np.isnan(values)


def time_column(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(microseconds since the epoch, UTC; present; unreadable). Years outside 1970-2099 as
    written are unreadable too."""
    n = len(col)
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        aware = pa.types.is_timestamp(col.type) and col.type.tz
        us = col.cast(pa.timestamp("us", "UTC") if aware else pa.timestamp("us"), safe=False)
        present = _mask(col.is_valid())
        micros = np.asarray(us.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False),
                            dtype=np.int64)
        years = micros.astype("datetime64[us]").astype("datetime64[Y]").astype(np.int64) + 1970
    else:
        text = text_column(col)
        present = text.present
        compact = _mask(pc.match_substring_regex(text.array, r"^\d{8}$"))
        cells = pd.Series(text.values(), dtype=object)
        parsed = pd.Series(pd.NaT, index=cells.index, dtype="datetime64[ns, UTC]")
        if compact.any():
            parsed[compact] = pd.to_datetime(cells[compact], format="%Y%m%d", utc=True,
                                             errors="coerce")
        iso = present & ~compact
        if iso.any():
            parsed[iso] = pd.to_datetime(cells[iso], format="ISO8601", utc=True, errors="coerce")
        head = pc.utf8_slice_codeunits(text.array, 0, 4)
        years = pd.to_numeric(pd.Series(head.to_numpy(zero_copy_only=False), dtype=object),
                              errors="coerce").fillna(0).to_numpy(dtype=np.int64)
        readable = parsed.notna().to_numpy()
        micros = np.zeros(n, dtype=np.int64)
        micros[readable] = parsed[readable].dt.as_unit("us").astype("int64").to_numpy()
        years = np.where(readable, years, 0)  # an unreadable cell fails the year check
    return micros, present, present & ((years < FIRST_YEAR) | (years > LAST_YEAR))


def bool_column(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, present, unreadable): true/false, yes/no, 1/0, t/f, y/n in any case."""
    if pa.types.is_boolean(col.type):
        return _mask(col), _mask(col.is_valid()), np.zeros(len(col), dtype=bool)
    text = text_column(col)
    lower = pc.utf8_lower(text.array)
    truth = _mask(pc.is_in(lower, pa.array(["true", "t", "yes", "y", "1"])))
    falsity = _mask(pc.is_in(lower, pa.array(["false", "f", "no", "n", "0"])))
    return truth, text.present, text.present & ~truth & ~falsity


def check_text(errors: Errors, text: Text, mask: np.ndarray, name: str, rule: Rule) -> None:
    """Length and pattern of the text cells selected by ``mask``."""
    mask = mask & text.present
    if not mask.any():
        return
    length = np.asarray(pc.utf8_length(text.array).fill_null(0).to_numpy(zero_copy_only=False))
    errors.fail(mask & (length > (rule.max_length or 10**9)), name,
                f"at most {rule.max_length} characters")
    if rule.pattern:
        matches = pc.match_substring_regex(text.array, rule.pattern).fill_null(True)
        what = ("an id: letters, digits and _ . : - (not '.' nor '..')"
                if rule.max_length == 64 else "text without control characters")
        errors.fail(mask & ~_mask(matches), name, f"must be {what}")


def check_number(errors: Errors, values: np.ndarray, mask: np.ndarray, name: str,
                 rule: Rule) -> None:
    """Finite, integral when the rule says integer, within the rule's bounds."""
    if not mask.any():
        return
    errors.fail(mask & ~np.isfinite(values), name, "must be a finite number")
    with np.errstate(invalid="ignore"):
        if rule.kind == "integer":
            errors.fail(mask & (np.floor(values) != values), name, "must be an integer")
        for bound, bad, words in (
                (rule.minimum, np.less, "at least"),
                (rule.exclusive_minimum, np.less_equal, "greater than"),
                (rule.maximum, np.greater, "at most"),
                (rule.exclusive_maximum, np.greater_equal, "less than")):
            if bound is not None:
                errors.fail(mask & bad(values, bound), name, f"must be {words} {bound:g}")
