"""The world folder's metadata (``world.json``): the program's calendar and business constants.

A world folder is what `rewards simulate` writes, and what a real program's import will write:
members, catalog, logged decisions and outcomes. ``world.json`` says when its history starts
and ends and the program's margin and attribution window. It is read here and only here, so a
missing or incomplete file is one clear error, whoever asks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

META_FILE = "world.json"


class WorldMeta(BaseModel):
    """What training and feature building need to know about a world's history."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    start: str = Field(description="first day of the history, ISO date")
    days: int = Field(gt=0)
    members: int = Field(ge=0)
    margin: float = Field(0.3, gt=0, description="profit margin on incremental spend")
    attribution_window_days: int = Field(7, gt=0)

    @property
    def start_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.start, tz="UTC")

    @property
    def end_ts(self) -> pd.Timestamp:
        """First instant after the history (outcomes at or after it are not known yet)."""
        return self.start_ts + pd.Timedelta(days=self.days)


def world_exists(world_dir: Path) -> bool:
    return (world_dir / META_FILE).is_file()


def read_world_meta(world_dir: Path) -> WorldMeta:
    """The world's metadata; FileNotFoundError that says what to run when there is none."""
    path = world_dir / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no world at {world_dir} ({META_FILE} missing): run `rewards simulate` first")
    return WorldMeta.model_validate(json.loads(path.read_text()))
