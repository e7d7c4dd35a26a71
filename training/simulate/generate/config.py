"""Parameters of one simulated world.

Everything that changes the output lives here (plus the fixed catalog and the model constants in
`truth.py`, which are versioned by `GENERATOR_VERSION`), so `world.json` can describe a run fully.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

GENERATOR_VERSION = "sim-1.0"
DAY_US = 86_400 * 1_000_000


class WorldConfig(BaseModel):
    """Size, seed and logging-policy settings of a simulated loyalty world.

    Invalid values raise `ValueError` (pydantic's `ValidationError` is one) naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    members: int = Field(default=100_000, ge=1, description="member_id runs 1..members")
    days: int = Field(default=90, ge=1, le=3650, description="length of the window in days")
    seed: int = Field(default=0, ge=0, description="root seed; same config -> identical files")
    start: dt.date = Field(default=dt.date(2026, 1, 1), description="day 0, UTC midnight")
    holdout_share: float = Field(
        default=0.15, ge=0.10, lt=1.0, description="share of offer decisions with no offer"
    )
    offer_interval_days: int = Field(
        default=7, ge=1, description="days between a member's offer decisions"
    )
    challenge_interval_days: int = Field(
        default=14, ge=1, description="days between a member's challenge assignments"
    )
    attribution_window_days: int = Field(
        default=7, ge=1, description="days after an offer in which its outcome is counted"
    )
    margin: float = Field(default=0.3, gt=0.0, le=1.0, description="share of spend that is profit")

    @model_validator(mode="after")
    def _windows_do_not_overlap(self) -> WorldConfig:
        # Non-overlapping windows let every purchase be attributed to at most one decision.
        if self.attribution_window_days > self.offer_interval_days:
            raise ValueError(
                "attribution_window_days must be <= offer_interval_days "
                f"(got {self.attribution_window_days} > {self.offer_interval_days}) so that "
                "attribution windows of one member never overlap"
            )
        return self

    @property
    def start_us(self) -> int:
        """Microseconds since the epoch of day 0 at UTC midnight."""
        midnight = dt.datetime.combine(self.start, dt.time(), tzinfo=dt.UTC)
        return int(midnight.timestamp()) * 1_000_000

    @property
    def end_us(self) -> int:
        """Exclusive end of the window, in microseconds since the epoch."""
        return self.start_us + self.days * DAY_US

    def to_world_json(self) -> dict[str, Any]:
        """The `world.json` payload described in docs/data_contract.md."""
        payload = self.model_dump(mode="json")
        payload["end"] = (self.start + dt.timedelta(days=self.days)).isoformat()
        payload["generator_version"] = GENERATOR_VERSION
        return payload

