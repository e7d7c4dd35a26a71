"""`rewards ope`: the off-policy value of any candidate policy on logged decisions from any
source (this service's decision log, another bandit's, a vendor's export). Registered on the main
app in training/cli/app.py; the estimators live in training/evaluation/logged_ope.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from training.cli.common import UserError, echo_err, friendly

if TYPE_CHECKING:
    import pandas as pd

#: Progress lines appear only once a run has taken this long: a quick run prints its result only.
QUIET_SECONDS = 1.0


@friendly
def ope(
    log: Annotated[Path, typer.Option("--log", help="Logged decisions, CSV or Parquet: "
                                      "decision_id, slot (optional), action, propensity, reward, "
                                      "any other columns as context.")],
    target: Annotated[Path, typer.Option("--target", help="The candidate's full distribution, "
                                         "CSV or Parquet: decision_id, slot (optional), action, "
                                         "probability.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimates as JSON.")] = False,
    clip: Annotated[float | None, typer.Option(help="Cap importance weights at this value "
                                               "(default: no cap).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")]
    = 500,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and of the folds.")] = 0,
    folds: Annotated[int, typer.Option(help="Cross-fitting folds of DR's reward model.")] = 5,
) -> None:
    """Estimate a candidate policy's mean reward on logged decisions: IPS, SNIPS and, when the
    log has context columns, doubly robust, each with a 95% bootstrap interval."""
    from training.evaluation.logged_ope import OPEInputError, evaluate_logged

    if clip is not None and not clip > 0:
        raise UserError(f"--clip: expected a positive weight cap, got {clip}")
    if bootstrap < 2:
        raise UserError(f"--bootstrap: expected at least 2 resamples, got {bootstrap}")
    if folds < 2:
        raise UserError(f"--folds: expected at least 2, got {folds}")
    start = time.monotonic()

    def progress(message: str) -> None:
        if time.monotonic() - start > QUIET_SECONDS:
            echo_err(message)

    frames = {"LOG": _read(log, "LOG"), "TARGET": _read(target, "TARGET")}
    paths = {"LOG": log, "TARGET": target}
    try:
        result = evaluate_logged(frames["LOG"], frames["TARGET"], clip=clip,
                                 n_bootstrap=bootstrap, seed=seed, folds=folds,
                                 progress=progress)
    except OPEInputError as exc:
        raise UserError(f"{exc.source} {paths[exc.source]}: {exc.detail}") from None
    if as_json:
        typer.echo(json.dumps(result, allow_nan=False))
    else:
        typer.echo(_table(result))


def _read(path: Path, source: str) -> pd.DataFrame:
    """A CSV or Parquet file by its suffix. CSV keys are read as text so ``007`` stays ``007``
    and matches the same id in a Parquet file."""
    import pandas as pd

    name = path.name.lower()
    if not name.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        raise UserError(f"{source} {path}: expected a .csv or .parquet file")
    if not path.is_file():
        raise UserError(f"{source} {path}: no such file")
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"decision_id": str, "slot": str, "action": str})
    except (OSError, ValueError) as exc:
        raise UserError(f"{source} {path}: cannot read it ({exc})") from None


def _table(result: dict[str, Any]) -> str:
    """The estimates for a person: one line per estimator, then the weight diagnostics."""
    context = ", ".join(result["context_columns"]) or "none (no DR)"
    lines = [f"{result['n']:,} logged rows, {result['actions']} actions, context: {context}",
             "", f"{'estimator':<10}{'value':>12}   95% interval"]
    for name in ("ips", "snips", "dr"):
        if result[name] is None:
            continue
        low, high = result[f"{name}_ci_low"], result[f"{name}_ci_high"]
        interval = "n/a" if low is None or high is None else f"[{low:.6g}, {high:.6g}]"
        lines.append(f"{name.upper():<10}{result[name]:>12.6g}   {interval}")
    weights = (f"effective sample size {result['ess']:,.1f}, max weight "
               f"{result['max_weight']:.4g}, clipped rows {result['clipped']:,}")
    lines += ["", weights]
    return "\n".join(lines)
