"""Experiment I/O: create, list and report against the event store (API and CLI share it)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pandas as pd

from serving.stores.events import EventStore
from serving.experiments.definition import Experiment, ExperimentCreate
from serving.experiments.registry import parse_experiments
from serving.experiments.report import ExperimentReport, build_report

OUTCOME_EVENTS = ("impression", "redemption", "challenge_completed", "purchase")


class ExperimentConflict(ValueError):
    """The new experiment's period overlaps another's: a member would be in two at once."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def list_experiments(events: EventStore) -> list[Experiment]:
    return parse_experiments(events.experiments())


def get_experiment(events: EventStore, experiment_id: str) -> Experiment | None:
    return next((e for e in list_experiments(events) if e.id == experiment_id), None)


def create_experiment(events: EventStore, body: ExperimentCreate, now: datetime) -> Experiment:
    """Validate against the stored experiments and store; periods may not overlap.

    Overlap is refused rather than resolved by priority: an arm applied by one experiment would
    silently change the other's treatment. (A race between two creators is harmless for
    assignment, which needs no storage, and the cache applies the earliest-starting one.)
    """
    for other in list_experiments(events):
        if other.overlaps(body):
            raise ExperimentConflict("body.start", f"period overlaps experiment {other.id!r} "
                                     f"({other.start.isoformat()} to {other.end.isoformat()})")
    experiment = Experiment.new(body, now)
    events.add_experiment(experiment.id, experiment.name, experiment.start, experiment.end,
                          experiment.model_dump_json())
    return experiment


def load_segments(events: EventStore) -> pd.DataFrame | None:
    """Member attributes for the segment table (region), from the member profiles in the event
    store; None when no profile has one.

    Optional: the report works without it (tier and channel come from the exposure log).
    """
    members = events.members_frame()
    if members.empty or members["region"].isna().all():
        return None
    return members[["member_id", "region"]]


def compute_report(events: EventStore, experiment: Experiment, as_of: datetime,
                   item_costs: dict[str, float] | None = None,
                   segments: pd.DataFrame | None = None) -> ExperimentReport:
    """Read the exposures and the events in their windows, then :func:`build_report`."""
    exposures = events.exposures(experiment.id)
    if exposures.empty:
        frame = events.events_between(experiment.start, experiment.start, OUTCOME_EVENTS)
    else:
        start = exposures["exposed_at"].min().to_pydatetime()
        end = (exposures["exposed_at"].max().to_pydatetime()
               + timedelta(days=experiment.attribution_window_days))
        frame = events.events_between(start, end, OUTCOME_EVENTS)
        frame = frame[frame["member_id"].isin(exposures["member_id"])]
    return build_report(experiment, exposures, frame, as_of, item_costs, segments)


def report_json(report: ExperimentReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2)
