"""The program's catalog as the request path reads it: rewards and challenge templates with
their model features, as numpy columns and integer codes prepared once.

Pure: the files are read by serving.stores.catalog, the item features come from the online
store (serving) or the offline parquet (batch jobs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from serving.contract.vocabulary import TIERS, code
from serving.decisioning.candidates import CHALLENGE_ITEM_COLUMNS, REWARD_ITEM_COLUMNS
from serving.decisioning.ranking import target_layout


@dataclass(frozen=True)
class Catalog:
    """Rewards and challenge templates: display attributes plus cached model features."""

    rewards: pd.DataFrame  # reward_id, name, reward_type, category, cost, min_tier + features
    challenges: pd.DataFrame  # challenge_id, name, kind, unit, duration_days, points + features
    targets: pd.DataFrame  # one row per (challenge_id, allowed target) + template features

    def __post_init__(self) -> None:
        # The request path works on these numpy columns: pandas indexing costs ~10 us a call,
        # and a request would make hundreds of them.
        object.__setattr__(self, "reward_cols", _columns(self.rewards))
        object.__setattr__(self, "target_cols", _columns(self.targets))
        # integer codes for the per-request rules (category caps, one target per template,
        # one challenge per kind): sorting strings on every request costs more than the rules
        for name, frame, column in (("reward_category_index", self.rewards, "category"),
                                    ("target_template_index", self.targets, "challenge_id"),
                                    ("target_kind_index", self.targets, "kind")):
            codes = np.unique(frame[column].to_numpy(), return_inverse=True)[1]
            object.__setattr__(self, name, codes.astype(np.int64))
        object.__setattr__(self, "template_ids", self.challenges["challenge_id"].tolist())
        # every template's grid rows by target: the flow-zone choice as one argmin per template
        object.__setattr__(self, "target_layout", target_layout(
            self.target_template_index, self.target_cols["target"]))  # type: ignore[attr-defined]

    @classmethod
    def build(cls, rewards: pd.DataFrame, challenges: pd.DataFrame,
              reward_features: pd.DataFrame, challenge_features: pd.DataFrame) -> Catalog:
        """The catalog from its items (serving.stores.catalog reads them) and their model
        features (online store or offline parquet): every item must have its features."""
        rewards = rewards.merge(reward_features, on="reward_id", validate="one_to_one")
        challenges = challenges.merge(challenge_features, on="challenge_id",
                                      validate="one_to_one")
        rows = []
        for _, c in challenges.iterrows():
            targets = np.arange(c["min_target"], c["max_target"] + c["target_step"] / 2,
                                c["target_step"])
            rows.append(pd.DataFrame({"challenge_id": c["challenge_id"], "target": targets}))
        targets = pd.concat(rows, ignore_index=True).merge(challenges, on="challenge_id")
        rewards["min_tier_rank"] = [code(TIERS, t) for t in rewards["min_tier"]]
        return cls(rewards.reset_index(drop=True), challenges.reset_index(drop=True), targets)


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {}
    for c in frame.columns:
        v = frame[c].to_numpy()
        out[c] = v.astype(np.float32) if c in (*REWARD_ITEM_COLUMNS, *CHALLENGE_ITEM_COLUMNS) else v
    return out
