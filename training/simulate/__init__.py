"""Synthetic loyalty world: members with hidden traits, engagement, randomized logs, truth.

`simulate_world(WorldConfig(...), out_dir)` writes the files described in
docs/data_contract.md; `training.simulate.truth` exposes the hidden model for oracle policies.
"""

from training.simulate.config import WorldConfig
from training.simulate.world import simulate_world

__all__ = ["WorldConfig", "simulate_world"]
