"""A back-dated run (`rewards retrain --as-of` in the past) builds and trains in a folder of its
own, never in serving's.

The feature folder is more than a training input: `rewards score-batch` scores campaigns from
it, `rewards features materialize` loads it into the online store and the refresher keeps its
watermark there. A retrain as of last week needs features as of last week, and Feast reads
them through its registry, whose sources name a folder. So a backfill gets a feature root of its
own (``StoreSettings.feature_root``: its features, its Feast registry, a local online store it
never fills) under ``<data>/backfills/``; the events, the ledger of frozen labels, the model
registry and the reports stay the program's. Nothing of serving's is moved or rewritten, so a
reader that does not take the data folder's lock (the refresher, campaign scoring) never
notices, and a run killed half-way leaves only a scratch folder, removed by the next backfill.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from serving.config import StoreSettings

#: Under the data folder: one scratch feature root per back-dated run.
BACKFILLS = "backfills"


def has_live_features(store: StoreSettings) -> bool:
    """Whether serving has features yet: its Feast registry exists (applied by the first
    materialize; a killed build, which removes the folder's history.json first, leaves it).
    A registry that is no local file (SQL, object store) is assumed to."""
    from serving.stores.features import registry_file

    registry = registry_file(store)
    return registry is None or registry.is_file()


@contextmanager
def backfill_store(store: StoreSettings, as_of: datetime) -> Iterator[StoreSettings]:
    """Settings like ``store``'s with a scratch feature root, removed afterwards whatever
    happened. Call it holding the data folder's lock: it also clears what killed runs left."""
    folder = store.data / BACKFILLS
    shutil.rmtree(folder, ignore_errors=True)  # earlier runs' (the lock says none is running)
    root = folder / f"{as_of:%Y%m%dT%H%M%S}-{os.getpid()}"
    root.mkdir(parents=True)
    before = os.environ.get("REWARDS_FEAST_ROOT")  # open_store points it at the scratch root
    try:
        yield store.model_copy(update={"feature_root": root})
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if before is None:
            os.environ.pop("REWARDS_FEAST_ROOT", None)
        else:
            os.environ["REWARDS_FEAST_ROOT"] = before
