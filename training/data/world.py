"""The world folder's metadata (``world.json``): the program's calendar and business constants.

A world folder is what `rewards simulate` writes (the product reads only its ``program/`` import
files, through `rewards import`). ``world.json`` says when its history starts
and ends and the program's margin and attribution window. It is read here and only here, so a
missing or incomplete file is one clear error, whoever asks.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.data.history import HistoryMeta

META_FILE = "world.json"


class WorldMeta(HistoryMeta):
    """A simulated world's calendar and constants (``world.json``): the same facts as the
    features' ``history.json``, written by the simulator for its own runs (oracle figures)."""


def world_exists(world_dir: Path) -> bool:
    return (world_dir / META_FILE).is_file()


def read_world_meta(world_dir: Path) -> WorldMeta:
    """The world's metadata; FileNotFoundError that says what to run when there is none."""
    path = world_dir / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no world at {world_dir} ({META_FILE} missing): run `rewards simulate` first")
    return WorldMeta.model_validate(json.loads(path.read_text()))
