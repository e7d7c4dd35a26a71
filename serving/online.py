"""Member features from the Feast online store, on the request path.

`FeatureStore.get_online_features` builds a typed response for arbitrary feature lists and
costs far more than the lookup itself under load. Serving always reads one view's features for
one entity, so it calls the configured online store's own ``online_read`` (SQLite by default,
Redis in production: the same call), which returns Feast's stored values without the response
machinery. A test checks both paths return identical values.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feast import FeatureStore


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
        self._online = store._get_provider().online_store
        self._join_key = join_key
        self.feature_names = [f.name for f in self._view.features]
        self._lock = threading.Lock()  # the SQLite store shares one connection across threads

    def read(self, entity_id: int) -> MemberRow | None:
        """The entity's features, or None if the online store has no row for it."""
        key = self._entity_key(join_keys=[self._join_key],
                               entity_values=[self._value(int64_val=int(entity_id))])
        with self._lock:
            [(ts, values)] = self._online.online_read(self._store.config, self._view, [key],
                                                      self.feature_names)
        # SQLite answers a missing key with nothing; Redis with every feature unset (and the
        # epoch as timestamp): both mean "no row", i.e. a cold-start member.
        if not values or all(v.WhichOneof("val") is None for v in values.values()):
            return None
        return MemberRow({n: _as_float(values[n]) for n in self.feature_names if n in values}, ts)


def _as_float(value: object) -> float:
    """A stored ValueProto as a float (features are Float32; NaN when unset)."""
    kind = value.WhichOneof("val")  # type: ignore[attr-defined]
    return float("nan") if kind is None else float(getattr(value, kind))
