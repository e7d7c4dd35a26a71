"""Feast, as serving uses it: opening the store, FeatureService contracts, online reads.

Opening the store and reading a FeatureService's ordered features (the model input contract)
serve training and serving alike. Feast is imported lazily: it costs seconds, and short CLI
commands that never touch it should not pay that.

Member features on the request path: `FeatureStore.get_online_features` builds a typed response
for arbitrary feature lists and costs far more than the lookup itself under load. Serving always
reads one view's features for one entity, so :class:`OnlineFeatureReader` calls the configured
online store's own ``online_read`` (SQLite by default, Redis in production: the same call),
which returns Feast's stored values without the response machinery. A test checks both paths
return identical values.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.config import StoreSettings

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto


def feature_store_yaml(settings: StoreSettings) -> Path:
    """The per-environment config: feature_store.yaml (local) or feature_store.<env>.yaml."""
    name = "feature_store.yaml" if settings.feast_env == "local" else (
        f"feature_store.{settings.feast_env}.yaml")
    path = settings.repo / name
    if not path.is_file():
        raise FileNotFoundError(f"Feast config not found: {path} (REWARDS_FEAST_ENV={settings.feast_env})")
    return path


def registry_file(settings: StoreSettings) -> Path | None:
    """The Feast registry file named by the environment's feature_store yaml; None when the
    registry is not a local file (a SQL or object-store registry: nothing to look at)."""
    import yaml

    registry = yaml.safe_load(feature_store_yaml(settings).read_text()).get("registry")
    if isinstance(registry, dict):
        registry = registry.get("path")
    if not isinstance(registry, str) or "://" in registry:
        return None
    path = Path(registry.replace("${REWARDS_FEAST_ROOT}", str(settings.feast_root)))
    return path if path.is_absolute() else settings.repo / path


def open_store(settings: StoreSettings) -> FeatureStore:
    """A FeatureStore whose paths resolve under the settings' data folder."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    # Feast's config and the repo's sources read REWARDS_FEAST_ROOT; REWARDS_DATA_DIR stays the
    # data folder (it is also StoreSettings' own variable: settings built later must not
    # inherit a backfill's scratch folder)
    os.environ["REWARDS_DATA_DIR"] = str(settings.data)
    os.environ["REWARDS_FEAST_ROOT"] = str(settings.feast_root)
    if settings.redis_url is not None:  # read by feature_store.production.yaml
        os.environ["REWARDS_REDIS_URL"] = settings.redis_url
    (settings.feast_root / "feast").mkdir(parents=True, exist_ok=True)
    config = load_repo_config(settings.repo, feature_store_yaml(settings))
    return FeatureStore(config=config)


def service_feature_refs(store: FeatureStore, service_name: str) -> list[str]:
    """Ordered ``view:feature`` refs of a FeatureService, read from the registry."""
    service = store.get_feature_service(service_name)
    return [
        f"{projection.name_to_use()}:{feature.name}"
        for projection in service.feature_view_projections
        for feature in projection.features
    ]


def service_feature_names(store: FeatureStore, service_name: str) -> list[str]:
    """Ordered feature names (no view prefix) of a FeatureService."""
    return [ref.split(":", 1)[1] for ref in service_feature_refs(store, service_name)]


@dataclass(frozen=True)
class MemberRow:
    """One member's online feature values (float) and when they were computed."""

    values: dict[str, float]
    event_timestamp: datetime | None


class OnlineFeatureReader:
    """Reads a feature view's latest values for one entity key."""

    def __init__(self, store: FeatureStore, view_name: str, join_key: str = "member_id") -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key, self._value = EntityKey, Value
        self._store = store
        self._view = store.get_feature_view(view_name)
        # Any: the reads below use each store kind's own (private) connection methods
        self._online: Any = store._get_provider().online_store
        self._join_key = join_key
        self.feature_names = [f.name for f in self._view.features]
        self._lock = threading.Lock()  # the SQLite store shares one connection across threads
        self._sqlite_table: str | None = None  # quoted table name when the store is SQLite
        if type(self._online).__name__ == "SqliteOnlineStore":
            from feast.infra.online_stores.sqlite import _quote_id, _table_id

            config = store.config
            self._sqlite_table = _quote_id(_table_id(
                config.project, self._view, config.registry.enable_online_feature_view_versioning))
        # CAST: the raw epoch, not a datetime per row (Feast's connection parses declared
        # timestamp columns, ~80 conversions per member for one value we need once)
        self._sqlite_sql = None if self._sqlite_table is None else (
            f"SELECT feature_name, value, CAST(event_ts AS INTEGER) "
            f"FROM {self._sqlite_table} WHERE entity_key = ?")

    def _key(self, entity_id: str) -> EntityKeyProto:
        return self._entity_key(join_keys=[self._join_key],
                                entity_values=[self._value(string_val=str(entity_id))])

    def _serialized(self, key: EntityKeyProto) -> bytes:
        """The entity key as Feast stores it (SQLite's ``entity_key`` column)."""
        from feast.infra.key_encoding_utils import serialize_entity_key

        version = self._store.config.entity_key_serialization_version
        return serialize_entity_key(  # type: ignore[no-any-return]
            key, entity_key_serialization_version=version)

    def read(self, entity_id: str) -> MemberRow | None:
        """The entity's features, or None if the online store has no row for it."""
        key = self._key(entity_id)
        with self._lock:
            try:
                if self._sqlite_sql is not None:
                    return self._read_sqlite(key)
                [(ts, values)] = self._online.online_read(self._store.config, self._view,
                                                          [key], self.feature_names)
            except Exception:
                self._reconnect()
                raise
        # SQLite answers a missing key with nothing; Redis with every feature unset (and the
        # epoch as timestamp): both mean "no row", i.e. a cold-start member.
        if values is None or not _stored(values):
            return None
        return MemberRow({n: _as_float(values[n]) for n in self.feature_names if n in values}, ts)

    def _read_sqlite(self, key: EntityKeyProto) -> MemberRow | None:
        """What ``SqliteOnlineStore.online_read`` returns for one key, read with one plain
        query: the same rows of the same table on Feast's own connection, the same values and
        the same timestamp convention (Feast's ``convert_timestamp`` + UTC), in a fraction of
        the time (BENCHMARKS.md). tests/integration/test_feast_roundtrip.py compares the two on
        every member of the test world.

        Float32 values are decoded from their 5-byte protobuf encoding directly (parsing ~70
        ValueProto objects cost ~0.35 ms a request); anything else goes through protobuf."""
        conn = self._online._get_conn(self._store.config)
        rows = conn.execute(self._sqlite_sql, (self._serialized(key),)).fetchall()
        values: dict[str, float] = {}
        stored = 0
        for name, blob, _ in rows:
            if len(blob) == 5 and blob[0] == _FLOAT_TAG:
                values[name] = _FLOAT32.unpack_from(blob, 1)[0]
                stored += 1
            else:
                value = self._value()
                value.ParseFromString(blob)
                values[name] = _as_float(value)
                stored += value.WhichOneof("val") is not None
        if not stored:
            return None
        ts = datetime.fromtimestamp(int(rows[-1][2])).replace(tzinfo=UTC)
        return MemberRow({n: values[n] for n in self.feature_names if n in values}, ts)

    def _reconnect(self) -> None:
        """After a failed read, drop the SQLite store's connection so the next read opens a
        new one: a connection that saw its database file vanish or break keeps failing (it
        caches the schema) even after the file is back. Redis clients reconnect by themselves.
        """
        conn = getattr(self._online, "_conn", None)
        if self._sqlite_table is not None and conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - it is being discarded anyway
                pass
            self._online._conn = None

    def erase(self, entity_id: str) -> int:
        """Delete the entity's row from the online store (privacy erasure); feature values removed
        (the same count on every store, so the erasure receipt does not depend on the backend).

        Feast has no per-entity delete (only whole tables, or every key of an entity type on
        Redis), so this uses each store's own layout, with Feast's own key encoding:
        SQLite keeps one row per (entity, feature) in table ``<project>_<view>``; Redis keeps
        one hash per entity (all its views) under ``_redis_key(project, entity_key)``.
        The next materialization writes the member back if the offline sources still hold
        them: erasure must reach those too (docs/privacy.md).
        """
        config = self._store.config
        key = self._key(entity_id)
        kind = type(self._online).__name__
        with self._lock:
            if self._sqlite_table is not None:
                conn = self._online._get_conn(config)
                with conn:  # commits
                    cur = conn.execute(f"DELETE FROM {self._sqlite_table} WHERE entity_key = ?",
                                       (self._serialized(key),))
                return int(cur.rowcount)
            if kind == "RedisOnlineStore":
                from feast.infra.online_stores.helpers import _redis_key

                [(_, values)] = self._online.online_read(config, self._view, [key],
                                                         self.feature_names)
                client = self._online._get_client(config.online_store)
                redis_key = _redis_key(config.project, key,
                                       entity_key_serialization_version=(
                                           config.entity_key_serialization_version))
                return _stored(values) * int(client.delete(redis_key))
        raise NotImplementedError(f"erasure from a {kind} online store is not implemented")


#: ValueProto ``float_val`` (field 6, wire type 5: 32-bit little-endian), as Feast stores Float32.
_FLOAT_TAG = (6 << 3) | 5
_FLOAT32 = struct.Struct("<f")


def _stored(values: Mapping[str, Any] | None) -> int:
    """How many features hold a value. SQLite answers a missing key with nothing; Redis with
    every feature unset: both count 0."""
    present = (v.WhichOneof("val") is not None  # type: ignore[attr-defined]
               for v in (values or {}).values())
    return sum(present)


def _as_float(value: object) -> float:
    """A stored ValueProto as a float (features are Float32; NaN when unset)."""
    kind = value.WhichOneof("val")  # type: ignore[attr-defined]
    return float("nan") if kind is None else float(getattr(value, kind))
