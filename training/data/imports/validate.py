"""Validation of import chunks under the API's rules, read from the published JSON Schema of
``serving.contract`` so both doors of the event store refuse the same things: ``check_events``
and ``check_members`` take an arrow table (one chunk, column names normalized) and return the
rows to store and the rejects, each with its row number, field and reason. Pure: no store, no
file. A value in a column that the row's event type does not have (``points`` on a visit) is
ignored and counted, since a table has every column on every row.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import TypeAdapter, ValidationError

from serving.contract.events import (
    EVENT_FIELDS,
    EVENT_MODELS,
    FIRST_YEAR,
    LAST_YEAR,
    MAX_SAFE_INTEGER,
    Properties,
)
from serving.contract.schemas import MemberProfile
from training.data.imports.columns import (
    Checked,
    Errors,
    Rule,
    Text,
    bool_column,
    check_number,
    check_text,
    missing_text,
    number_column,
    rejects,
    text_column,
    time_column,
)

#: Profile columns of a members file; any other column is an attribute.
MEMBER_FIELDS = ("member_id", "joined_at", "tier", "region", "consent")
MAX_ATTRIBUTES = 50


def _schema_rules(model: Any) -> tuple[dict[str, Rule], frozenset[str]]:
    schema = model.model_json_schema()
    return ({name: Rule.of(prop) for name, prop in schema["properties"].items()},
            frozenset(schema.get("required", ())))


_BASE_RULES, _ = _schema_rules(EVENT_MODELS["visit"])  # event_id, member_id, decision_id
#: Per event type: the fields it has (its rules) and those it requires.
TYPE_RULES: dict[str, dict[str, Rule]] = {}
TYPE_REQUIRED: dict[str, frozenset[str]] = {}
for _type, _model in EVENT_MODELS.items():
    _rules, _required = _schema_rules(_model)
    TYPE_RULES[_type] = {f: r for f, r in _rules.items() if f in EVENT_FIELDS}
    TYPE_REQUIRED[_type] = _required & set(EVENT_FIELDS)
EVENT_TYPES = tuple(EVENT_MODELS)
MEMBER_RULES, _ = _schema_rules(MemberProfile)
#: Cross-field rules the schema states with oneOf/anyOf (serving.contract.events).
_EXACTLY_ONE_ITEM = ("impression", "click")
_SOME_ITEM = ("redemption",)
_PROPERTIES = TypeAdapter(Properties)


# -- events ----------------------------------------------------------------------------------------

_NUMERIC = frozenset(f for rules in TYPE_RULES.values() for f, r in rules.items()
                     if r.kind in ("number", "integer"))
_INTEGER = frozenset(f for rules in TYPE_RULES.values() for f, r in rules.items()
                     if r.kind == "integer")
_TYPE_INDEX = {name: i for i, name in enumerate(EVENT_TYPES)}
_TIME_REASON = f"must be an ISO-8601 or YYYYMMDD date or time in {FIRST_YEAR}-{LAST_YEAR}"


def type_codes(kind: Text) -> np.ndarray:
    """Position of each row's event type in EVENT_TYPES; -1 when missing, -2 when unknown
    (integer comparisons: the checks below run once per type and field)."""
    found = pc.index_in(kind.array, value_set=pa.array(EVENT_TYPES, pa.string()))
    codes = np.asarray(found.fill_null(-2).to_numpy(zero_copy_only=False), dtype=np.int64)
    codes[~kind.present] = -1
    return codes


def check_events(table: pa.Table, first_row: int = 1) -> Checked:
    """Validate one chunk of an events file (column names already normalized); the rows to
    import and the rejects. Pure: no store, no file."""
    n = table.num_rows
    errors = Errors(n)
    cols = set(table.column_names)
    kind = text_column(table["event_type"])
    code = type_codes(kind)
    errors.fail(code == -1, "event_type", "required")
    errors.fail(code == -2, "event_type",
                f"unknown event type; expected one of {', '.join(EVENT_TYPES)}")
    member = text_column(table["member_id"])
    errors.fail(~member.present, "member_id", "required")
    check_text(errors, member, member.present, "member_id", _BASE_RULES["member_id"])
    micros, present, bad = time_column(table["timestamp"])
    errors.fail(~present, "timestamp", "required")
    errors.fail(bad, "timestamp", _TIME_REASON)
    texts: dict[str, Text] = {}
    for name in ("event_id", "decision_id"):
        if name in cols:
            texts[name] = text_column(table[name])
            check_text(errors, texts[name], texts[name].present, name, _BASE_RULES[name])
    numbers: dict[str, np.ndarray] = {}
    applies: dict[str, np.ndarray] = {}
    unused: dict[str, np.ndarray] = {}
    for name in EVENT_FIELDS:
        numeric = name in _NUMERIC
        if name not in cols:
            given, bad = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
            if numeric:
                numbers[name] = np.full(n, np.nan)
            else:
                texts[name] = missing_text(n)
        elif numeric:
            numbers[name], bad = number_column(table[name])
            given = ~np.isnan(numbers[name]) | bad
        else:
            texts[name], bad = text_column(table[name]), np.zeros(n, dtype=bool)
            given = texts[name].present
        applies[name] = np.zeros(n, dtype=bool)
        for event_type, rules in TYPE_RULES.items():
            if name not in rules:
                continue
            rows = code == _TYPE_INDEX[event_type]
            applies[name] |= rows
            if name in TYPE_REQUIRED[event_type]:
                errors.fail(rows & ~given, name, f"required for {event_type} events")
            if not given.any():
                continue
            errors.fail(rows & bad, name, "must be a number")
            if numeric:
                check_number(errors, numbers[name], rows & given & ~bad, name, rules[name])
            else:
                check_text(errors, texts[name], rows & given, name, rules[name])
        unused[name] = given & ~applies[name]
    item = (texts["reward_id"].present & applies["reward_id"],
            texts["challenge_id"].present & applies["challenge_id"])
    one = np.isin(code, [_TYPE_INDEX[t] for t in _EXACTLY_ONE_ITEM])
    errors.fail(one & (item[0] == item[1]), "challenge_id",
                "give exactly one of reward_id and challenge_id")
    errors.fail(np.isin(code, [_TYPE_INDEX[t] for t in _SOME_ITEM]) & ~item[0] & ~item[1],
                "challenge_id", "give reward_id or challenge_id (or both)")
    errors.fail((code == _TYPE_INDEX["impression"]) & ~np.isnan(numbers["target"]) & ~item[1],
                "target", "a target belongs to a challenge impression only")
    properties = (_properties(errors, text_column(table["properties"]))
                  if "properties" in cols else None)

    good = np.flatnonzero(errors.ok)
    frame = pd.DataFrame({"event_type": kind.values(good), "member_id": member.values(good)})
    frame["event_timestamp"] = pd.to_datetime(micros[good], unit="us", utc=True).as_unit("us")
    if "decision_id" in texts:
        frame["decision_id"] = texts["decision_id"].values(good)
    for name in EVENT_FIELDS:
        keep = applies[name][good]
        if name in numbers:
            values = np.where(keep, numbers[name][good], np.nan)
            frame[name] = (pd.arrays.IntegerArray(np.nan_to_num(values).astype(np.int64),
                                                  np.isnan(values))
                           if name in _INTEGER else values)
        elif texts[name].present.any():
            values = texts[name].values(good)
            values[~keep] = None
            frame[name] = values
        else:
            frame[name] = None
    if properties is not None:
        frame["properties"] = properties[good]
    ids = (texts["event_id"].values(good) if "event_id" in texts
           else np.full(len(good), None, dtype=object))
    missing_id = pd.isna(ids)
    if missing_id.any():
        ids[missing_id] = content_ids(frame[missing_id])
    frame.insert(0, "event_id", ids)
    ignored = Counter({name: int((mask & errors.ok).sum()) for name, mask in unused.items()
                       if (mask & errors.ok).any()})
    return Checked(frame, rejects(table, errors, first_row), ignored, int(missing_id.sum()))


#: 64 characters of the id alphabet in ASCII order, so that encoded numbers sort as numbers.
_DIGITS = np.frombuffer(b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz",
                        dtype="S1")
#: Added to the time in content ids so that a time just before 1970 (1970-01-01T00:30+01:00)
#: stays positive; 9 digits of 6 bits then sort like the times until the year 2112.
_TIME_OFFSET = 2**52


def _base64(values: np.ndarray, digits: int) -> np.ndarray:
    """Fixed-width, order-preserving base-64 text of unsigned integers (vectorized)."""
    shifts = np.arange(digits - 1, -1, -1, dtype=np.uint64) * np.uint64(6)
    sextets = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(63)
    return _DIGITS[sextets].view(f"S{digits}").ravel()


def content_ids(frame: pd.DataFrame) -> np.ndarray:
    """Deterministic event ids for rows given none, so importing the file again finds them
    stored: ``h-``, the event time (9 characters) and a 96-bit BLAKE2b hash of what the row
    says (type, member, time, every field, properties; 16 characters), the same whichever file
    format or column order carried it.

    The time comes first so that a file in time order writes its ids in key order, nearly as
    cheap as sequence numbers (ids in random order cost the id index about 3x). Rows identical
    in every column get the same id (one event): give them event ids to keep them apart.
    """
    if frame.empty:
        return np.empty(0, dtype=object)
    micros = frame["event_timestamp"].array.asi8
    parts = [pa.array(frame["event_type"], pa.string()), pa.array(frame["member_id"], pa.string()),
             pa.array(micros).cast(pa.string())]
    for name in ("decision_id", *EVENT_FIELDS, "properties"):  # all, absent ones as nulls
        column = frame.get(name)
        if column is None or not column.notna().any():
            parts.append(pa.nulls(len(frame), pa.string()))
        else:
            parts.append(pa.array(column, from_pandas=True).cast(pa.string()))
    joined = pc.binary_join_element_wise(*parts, "\x1f", null_handling="replace",
                                         null_replacement="")
    digests = b"".join([hashlib.blake2b(row, digest_size=12).digest()
                        for row in joined.cast(pa.binary()).to_pylist()])
    w = np.frombuffer(digests, dtype=">u4").reshape(-1, 3).astype(np.uint64)  # 3 x 32 bits
    high = (w[:, 0] << np.uint64(16)) | (w[:, 1] >> np.uint64(16))  # 48 bits each
    low = ((w[:, 1] & np.uint64(0xFFFF)) << np.uint64(32)) | w[:, 2]
    ids = np.char.add(b"h-", _base64(micros + _TIME_OFFSET, 9))
    ids = np.char.add(np.char.add(ids, _base64(high, 8)), _base64(low, 8))
    return ids.astype(str).astype(object)


def _properties(errors: Errors, texts: Text) -> np.ndarray:
    """JSON objects as the API takes them; canonical JSON text (or None) per row."""
    out = np.full(len(texts.present), None, dtype=object)
    cells = texts.values()
    for i in np.flatnonzero(texts.present):
        try:
            value = _PROPERTIES.validate_python(json.loads(cells[i]))
        except (ValueError, ValidationError) as exc:
            reason = (exc.errors()[0]["msg"] if isinstance(exc, ValidationError)
                      else "must be a JSON object")
            errors.fail(np.arange(len(cells)) == i, "properties", reason)
            continue
        out[i] = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return out


# -- members ---------------------------------------------------------------------------------------

def check_members(table: pa.Table, first_row: int = 1) -> Checked:
    """Validate one chunk of a members file: the profiles to upsert and the rejects. Columns
    other than the profile's are the member's attributes (Parquet keeps their numbers and
    booleans; CSV cells are text)."""
    n = table.num_rows
    errors = Errors(n)
    member = text_column(table["member_id"])
    errors.fail(~member.present, "member_id", "required")
    check_text(errors, member, member.present, "member_id", _BASE_RULES["member_id"])
    micros, present, bad = time_column(table["joined_at"])
    errors.fail(~present, "joined_at", "required")
    errors.fail(bad, "joined_at", _TIME_REASON)
    texts = {}
    for name in ("tier", "region"):
        texts[name] = (text_column(table[name]) if name in table.column_names
                       else missing_text(n))
        if name == "tier":
            errors.fail(~texts[name].present, name, "required")
        check_text(errors, texts[name], texts[name].present, name, MEMBER_RULES[name])
    consent = pd.array(np.full(n, pd.NA), dtype="boolean")
    if "consent" in table.column_names:
        values, given, unreadable = bool_column(table["consent"])
        errors.fail(unreadable, "consent", "must be true or false")
        consent = pd.arrays.BooleanArray(values, ~given)
    extra = [c for c in table.column_names if c not in MEMBER_FIELDS]
    attributes = {c: _attribute(errors, c, table[c]) for c in extra}
    good = np.flatnonzero(errors.ok)
    frame = pd.DataFrame({"member_id": member.values(good)})
    frame["joined_at"] = pd.to_datetime(micros[good], unit="us", utc=True).as_unit("us")
    frame["tier"], frame["region"] = texts["tier"].values(good), texts["region"].values(good)
    frame["consent"] = consent[good]
    frame["attributes"] = None
    if extra:
        rows = zip(*(attributes[c][good] for c in extra), strict=True)
        dicts = ({c: v for c, v in zip(extra, row, strict=True) if v is not None} for row in rows)
        frame["attributes"] = [json.dumps(d, sort_keys=True, separators=(",", ":")) if d
                               else None for d in dicts]
    return Checked(frame, rejects(table, errors, first_row))


def _attribute(errors: Errors, name: str, col: pa.ChunkedArray) -> np.ndarray:
    """One extra column as attribute values (text, number or boolean, as the API allows)."""
    if pa.types.is_boolean(col.type):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        errors.fail(~np.isnan(values) & ~(np.abs(values) <= MAX_SAFE_INTEGER), name,
                    "numbers must be finite and within +-(2**53 - 1)")
        ints = pa.types.is_integer(col.type)
        return np.array([None if np.isnan(v) else (int(v) if ints else float(v))
                         for v in values], dtype=object)
    text = text_column(col)
    check_text(errors, text, text.present, name, Rule("string", max_length=256))
    return text.values()
