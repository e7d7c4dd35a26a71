"""The catalog's files, read in one place: a program's rewards and challenge templates.

The catalog folder (``REWARDS_CATALOG_DIR``, by default the world folder) holds
``rewards.parquet`` and ``challenges.parquet`` (columns in docs/data_contract.md). Serving joins
them with the items' features from the online store; batch jobs with the offline parquet.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serving.decisioning.catalog import Catalog

REWARDS_FILE = "rewards.parquet"
CHALLENGES_FILE = "challenges.parquet"


def catalog_exists(catalog_dir: Path) -> bool:
    return (catalog_dir / REWARDS_FILE).is_file() and (catalog_dir / CHALLENGES_FILE).is_file()


def read_catalog(catalog_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rewards, challenges); FileNotFoundError that says what to run when there is none."""
    if not catalog_exists(catalog_dir):
        raise FileNotFoundError(
            f"no catalog at {catalog_dir} ({REWARDS_FILE}, {CHALLENGES_FILE}): "
            "run `rewards demo` or `rewards simulate` first")
    return (pd.read_parquet(catalog_dir / REWARDS_FILE),
            pd.read_parquet(catalog_dir / CHALLENGES_FILE))


def load_catalog(catalog_dir: Path, reward_features: pd.DataFrame,
                 challenge_features: pd.DataFrame) -> Catalog:
    """The catalog with the given item features (one row per reward / template)."""
    rewards, challenges = read_catalog(catalog_dir)
    return Catalog.build(rewards, challenges, reward_features, challenge_features)


def load_offline_catalog(catalog_dir: Path, features_dir: Path) -> Catalog:
    """Item features from the offline parquet (batch jobs that need no online store)."""
    def read(name: str) -> pd.DataFrame:
        return pd.read_parquet(features_dir / name).drop(columns="event_timestamp")

    return load_catalog(catalog_dir, read("reward_features.parquet"),
                        read("challenge_features.parquet"))
