"""The learning loop's commands: `rewards retrain` and `rewards data join-report`."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from training.cli.common import (
    DataDirOpt, UserError, _settings, echo_err, friendly, require_event_store,
)

data_app = typer.Typer(help="The decision log and its outcomes.", no_args_is_help=True)

AsOfOpt = Annotated[str | None, typer.Option(
    "--as-of", help="Read the store as of this ISO-8601 instant with a time zone (default: "
                    "now). Decisions whose window is still open then are left out.")]


def _as_of(value: str | None) -> Any:
    import pandas as pd

    if value is None:
        return pd.Timestamp(datetime.now(UTC))
    try:
        when = pd.Timestamp(value)
    except ValueError:
        raise UserError(f"--as-of: expected an ISO-8601 time, got {value!r}") from None
    if when.tzinfo is None:
        raise UserError(f"--as-of: {value!r} has no time zone (add Z or +00:00)")
    return when


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinity) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def join_report_for(store: Any, as_of: Any) -> Any:
    """The join report of the event store and decision log as of ``as_of``."""
    from serving.stores.events import open_event_store
    from training.cli.data import catalog_frames
    from training.data.decision_log import join_report
    from training.data.history import EVENT_COLUMNS, read_history
    from training.data.snapshots import labelled_at
    from training.retrain import SNAPSHOTS

    rewards, challenges, vocabulary = catalog_frames(store)
    events_store = open_event_store(require_event_store(store))
    try:
        _, decisions = read_history(events_store, rewards, challenges, vocabulary,
                                    window_days=store.attribution_window_days, as_of=as_of,
                                    columns=(*EVENT_COLUMNS, "received_at"))
    finally:
        events_store.close()
    return join_report(decisions.events, decisions.offers, decisions.assignments, as_of,
                       store.attribution_window_days,
                       imported_duplicates=decisions.imported_duplicates,
                       labelled_at=labelled_at(store.data / SNAPSHOTS))


@data_app.command("join-report")
@friendly
def join_report_cmd(
    as_of: AsOfOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """How logged decisions and posted outcomes met: decisions (logged, imported, open
    windows), outcomes matched by decision id or by member and item, unmatched, outside the
    window, late, and duplicates."""
    report = join_report_for(_settings(data_dir), _as_of(as_of))
    typer.echo(report.to_json() if as_json else report.text())


@friendly
def retrain(
    as_of: AsOfOpt = None,
    force: Annotated[bool, typer.Option(
        help="Train even when no decision closed since the last retrain.")] = False,
    as_present: Annotated[bool, typer.Option(
        "--as-present", help="Treat --as-of as the program's present (a simulation's clock): "
        "refresh the online store from this run's features and keep them. Without it, an "
        "--as-of run is a backfill: it trains on features as of then and leaves serving's "
        "online store and the live feature folder as they were.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Retrain from the service's own decisions and outcomes, gated by off-policy evaluation.

    Snapshot (dataset hash) -> features from the event store -> reward and difficulty models
    -> held-out metrics -> off-policy estimates of candidate and champion (and of the version
    on trial, on its own traffic) -> promote only when a DR lower bound beats the champion's
    estimate, else put the candidate on trial -> services reload. Safe to run from cron:
    without new closed decisions it changes nothing."""
    from training.config import get_train_settings
    from training.retrain import RetrainSettings
    from training.retrain import retrain as run

    import pandas as pd

    store = _settings(data_dir)
    require_event_store(store)
    when = _as_of(as_of)
    if when > pd.Timestamp(datetime.now(UTC)) + pd.Timedelta(minutes=5):
        # windows still open then would count as closed, and their partial labels be frozen
        raise UserError(f"--as-of: {as_of!r} is in the future; a retrain reads the store as "
                        "of an instant that has passed")
    try:  # libraries print progress on stdout (Feast's materialize): stdout is the answer's
        with contextlib.redirect_stdout(sys.stderr):
            record = run(store, get_train_settings(), RetrainSettings(),
                         as_of=when.to_pydatetime(), force=force,
                         as_present=as_of is None or as_present, progress=echo_err)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if as_json:  # strict JSON: NaN and infinities as null, for jq and every parser
        typer.echo(json.dumps(_finite(record), default=str, allow_nan=False))
    else:
        for fam in record.get("families", []):
            verdict = "promoted" if fam["promoted"] else "kept the champion"
            typer.echo(f"{fam['name']} v{fam['candidate']}: {verdict} ({fam['reason']})")
            trial = fam.get("trial")
            if trial:
                typer.echo(f"{fam['name']} v{trial['version']} (on trial): "
                           f"{'promoted' if trial['promoted'] else 'not promoted'} "
                           f"({trial['reason']})")
            if fam.get("on_trial"):
                typer.echo(f"{fam['name']} v{fam['on_trial']} is on trial: serving runs it on "
                           "REWARDS_TRIAL_SHARE of decisions until the next retrain")
        if record["status"] == "unchanged":
            typer.echo(f"unchanged: no decision closed since snapshot {record['snapshot']}")
