"""A back-dated run (`rewards retrain --as-of` in the past) must not leave its features behind.

The feature folder is more than a training input: `rewards score-batch` scores campaigns from
it, `rewards features materialize` loads it into the online store and the refresher keeps its
watermark there. A retrain as of last week rebuilds it as of last week (Feast's offline sources
point at it, so training has to read it there). Left in place, the next campaign would be scored
on week-old features. So the live folder is moved aside for the run (a rename: instant, whatever
its size) and put back afterwards, whatever happened. A run killed in between leaves the live
folder aside; the next job to take the data folder's lock puts it back
(:func:`restore_leftover`, called by ``job_lock.exclusive``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The live feature folder's name while a back-dated run has it aside.
ASIDE_SUFFIX = ".live"


def aside_path(features_dir: Path) -> Path:
    return features_dir.with_name(features_dir.name + ASIDE_SUFFIX)


def live_features(features_dir: Path) -> Path:
    """The live feature folder, for readers that do not take the lock (campaign scoring): the
    one aside while a back-dated run (or what a killed one left) has the usual place."""
    aside = aside_path(features_dir)
    return aside if aside.is_dir() else features_dir


def restore_leftover(features_dir: Path) -> bool:
    """Put back a live folder a killed back-dated run left aside; whether there was one.

    Only the holder of the data folder's lock may call this: a running back-dated job has
    its live folder aside on purpose."""
    aside = aside_path(features_dir)
    if not aside.is_dir():
        return False
    if features_dir.exists():
        shutil.rmtree(features_dir)
    aside.rename(features_dir)
    return True


@contextmanager
def live_features_kept(features_dir: Path) -> Iterator[None]:
    """Run the body on a scratch feature folder at ``features_dir``; the live one comes back
    after it, byte for byte, whether the body returned or raised."""
    aside = aside_path(features_dir)
    restore_leftover(features_dir)
    had_live = features_dir.is_dir()
    if had_live:
        features_dir.rename(aside)
    try:
        yield
    finally:
        if features_dir.exists():
            shutil.rmtree(features_dir)
        if had_live:
            aside.rename(features_dir)
