"""`rewards import members|events FILE`: a program's history into the event store, the one that
`rewards serve` and `rewards features build` read (REWARDS_EVENTS_URL, default
<data>/events.db). Registered on the main app in training/cli/app.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from training.cli.common import DataDirOpt, _settings, echo_err, friendly

import_app = typer.Typer(
    help="Import a program's members and events (CSV or Parquet) into the event store; "
         "columns: README, 'Importing a program's data'.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="A .csv or .parquet file.", show_default=False)]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="csv or parquet (default: from the suffix).")]
ChunkOpt = Annotated[int, typer.Option(
    min=1, help="Rows per chunk; each chunk is imported whole or not at all.")]
RejectsOpt = Annotated[Path | None, typer.Option(
    help="Where bad rows go, with their row number, field and reason "
         "(default: <FILE stem>.rejects.csv beside the file).")]
AllowOpt = Annotated[bool, typer.Option(
    "--allow-rejects", help="Exit 0 even when rows were rejected (the good rows are imported "
                            "either way).")]
ProgressOpt = Annotated[bool, typer.Option(help="Progress bar on stderr.")]


@import_app.command("members")
@friendly
def import_members(file: FileArg, fmt: FormatOpt = None, chunk_rows: ChunkOpt = 100_000,
                   rejects: RejectsOpt = None, allow_rejects: AllowOpt = False,
                   progress: ProgressOpt = True, data_dir: DataDirOpt = None) -> None:
    """Create or update member profiles: member_id, joined_at (or signup_date), tier, and
    optionally region, consent; any other column becomes an attribute."""
    _run("members", file, fmt, chunk_rows, rejects, allow_rejects, progress, data_dir)


@import_app.command("events")
@friendly
def import_events(file: FileArg, fmt: FormatOpt = None, chunk_rows: ChunkOpt = 100_000,
                  rejects: RejectsOpt = None, allow_rejects: AllowOpt = False,
                  progress: ProgressOpt = True, data_dir: DataDirOpt = None) -> None:
    """Add events (idempotent by event_id: importing a file again adds nothing): event_type,
    member_id, timestamp (or event_timestamp), and the type's fields."""
    _run("events", file, fmt, chunk_rows, rejects, allow_rejects, progress, data_dir)


def _run(kind: Literal["members", "events"], file: Path, fmt: str | None, chunk_rows: int,
         rejects: Path | None, allow_rejects: bool, progress: bool,
         data_dir: Path | None) -> None:
    """Import, print the summary (one JSON line on stdout), and exit 2 on rejects unless
    allowed."""
    from serving.config import ServeSettings
    from serving.stores.events import open_event_store
    from training.data.imports import import_file

    if not file.is_file():
        raise FileNotFoundError(f"no such file: {file}")
    store = open_event_store(ServeSettings().events(_settings(data_dir)))
    try:
        summary = import_file(kind, file, store, fmt=fmt, chunk_rows=chunk_rows,
                              rejects=rejects, progress=progress)
    finally:
        store.close()
    typer.echo(json.dumps(summary.as_dict()))
    if summary.rejected and not allow_rejects:
        echo_err(f"error: {summary.rejected} of {summary.read} rows rejected, listed in "
                 f"{summary.rejects_file} (the others were imported; --allow-rejects to "
                 "accept)")
        raise typer.Exit(code=2)
