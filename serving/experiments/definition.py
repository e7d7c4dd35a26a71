"""What an experiment is: arms with traffic shares, a period, a primary metric, a window.

Validation happens here, once, for the API and the CLI alike; errors name the field.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo,
    field_validator,
)

from serving.contract.events import NUMBER, Timestamp
from serving.experiments.assignment import assign

ArmName = Literal["model", "random", "holdout"]
PrimaryMetric = Literal["redemption", "challenge_completion", "incremental_spend"]
ARM_BEHAVIOUR: dict[str, str] = {
    "model": "personalized ranking (the service's normal answer)",
    "random": "a random eligible reward (challenges as in the model arm)",
    "holdout": "no reward and no challenge offered",
}
ExperimentName = Annotated[str, StringConstraints(min_length=1, max_length=80,
                                                  pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$")]
Salt = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                        pattern=r"^[A-Za-z0-9_.:-]+$")]
SHARE_TOLERANCE = 1e-6


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ArmName
    share: Annotated[float, NUMBER] = Field(gt=0, le=1, allow_inf_nan=False,
                                            description="fraction of members")


class ExperimentCreate(BaseModel):
    """Request body of POST /v1/experiments (and `rewards experiments create`)."""

    model_config = ConfigDict(extra="forbid")

    name: ExperimentName
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    arms: list[Arm] = Field(min_length=2, max_length=3)
    start: Timestamp
    end: Timestamp
    primary_metric: PrimaryMetric = "redemption"
    attribution_window_days: Annotated[int, NUMBER] = Field(7, ge=1, le=90)
    salt: Salt | None = Field(None, description="default: the experiment id")

    @field_validator("arms")
    @classmethod
    def _arms_valid(cls, arms: list[Arm]) -> list[Arm]:
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if "model" not in names:
            raise ValueError("an experiment needs a 'model' arm to measure")
        total = sum(a.share for a in arms)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"arm shares must sum to 1, got {total:g}")
        return arms

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("start")
        if start is not None and end <= start:
            raise ValueError("must be after start")
        return end


class Experiment(ExperimentCreate):
    """A stored experiment: the definition plus its id, salt and creation time."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=64,
                                         pattern=r"^[A-Za-z0-9_.:-]+$")]
    salt: Salt
    created_at: AwareDatetime

    @classmethod
    def new(cls, body: ExperimentCreate, created_at: datetime) -> Experiment:
        slug = re.sub(r"[^a-z0-9]+", "-", body.name.lower()).strip("-")[:40] or "exp"
        exp_id = f"{slug}-{secrets.token_hex(3)}"
        fields = body.model_dump(include=set(ExperimentCreate.model_fields))
        return cls(**{**fields, "salt": body.salt or exp_id}, id=exp_id, created_at=created_at)

    def is_active(self, now: datetime) -> bool:
        return self.start <= now < self.end

    def overlaps(self, other: ExperimentCreate) -> bool:
        return self.start < other.end and other.start < self.end

    def arm_shares(self) -> list[tuple[str, float]]:
        return [(a.name, a.share) for a in self.arms]

    def arm_of(self, member_id: str) -> str:
        """This member's arm: a pure function of (salt, shares, member id)."""
        return assign(member_id, self.salt, self.arm_shares())
