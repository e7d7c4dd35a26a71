"""Experiments as the request path sees them: a cache refreshed in the background.

A decision must not pay a database query to learn which experiment is running, so the service
keeps every experiment in memory and reloads them every few seconds (like the budget), and at
once after one is created through this process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime

from serving.experiments.definition import Experiment

log = logging.getLogger("rewards.experiments")


def parse_experiments(definitions: list[str]) -> list[Experiment]:
    """Stored JSON definitions to models; one unreadable row is logged and skipped."""
    out = []
    for text in definitions:
        try:
            out.append(Experiment.model_validate(json.loads(text)))
        except Exception:  # noqa: BLE001 - a bad row must not hide the others
            log.exception("unreadable experiment definition skipped")
    return out


class ExperimentCache:
    """Every experiment, swapped atomically on refresh; ``active`` is a pure in-memory scan."""

    def __init__(self, load: Callable[[], list[str]]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self.experiments: tuple[Experiment, ...] = ()
        self.refreshed_at: datetime | None = None

    def refresh(self) -> None:
        loaded = tuple(parse_experiments(self._load()))
        with self._lock:
            self.experiments = loaded
            self.refreshed_at = datetime.now().astimezone()

    def active(self, now: datetime) -> Experiment | None:
        """The running experiment (periods never overlap: creation refuses it)."""
        for exp in self.experiments:
            if exp.is_active(now):
                return exp
        return None

    def get(self, experiment_id: str) -> Experiment | None:
        return next((e for e in self.experiments if e.id == experiment_id), None)
