"""A program's data into the product: `rewards import members|events FILE` (its history, into
the event store that `rewards serve` and `rewards features build` read: REWARDS_EVENTS_URL,
default <data>/events.db) and `rewards catalog import|list|retire` (its rewards, challenge
templates and vocabularies, kept in the same database: serving.stores.catalog). A running server
serves catalog changes within REWARDS_CATALOG_REFRESH_SECONDS, without a restart. Registered on
the main app in training/cli/app.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from training.cli.common import DataDirOpt, UserError, _settings, echo_err, friendly

if TYPE_CHECKING:
    from serving.stores.catalog import CatalogStore, ImportResult

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


catalog_app = typer.Typer(
    help="The program's catalog: rewards, challenge templates and vocabularies (as data).",
    no_args_is_help=True)

KindOpt = Annotated[str | None, typer.Option(
    "--kind", help="rewards, challenges or vocabulary (default: from the file's columns).")]


def _store(data_dir: Path | None, create: bool = True) -> CatalogStore:
    from serving.config import get_serve_settings
    from serving.stores.catalog import open_catalog_store

    url = get_serve_settings().events(_settings(data_dir))
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if not create and path is not None and not path.is_file():
        raise UserError(f"no catalog at {path}: run `rewards catalog import FILE` first")
    return open_catalog_store(url)


def _row_lines(result: ImportResult) -> list[str]:
    """One line per refused row: its number and every field's reason."""
    by_row: dict[int, list[str]] = {}
    for e in result.errors:
        by_row.setdefault(e.row, []).append(f"{e.field}: {e.reason}")
    return [f"row {row}: " + "; ".join(reasons) for row, reasons in sorted(by_row.items())]


def _write_rejects(path: Path, result: ImportResult) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "field", "reason"])
        writer.writerows((e.row, e.field, e.reason) for e in result.errors)


@catalog_app.command("import")
@friendly
def catalog_import(
    file: Annotated[Path, typer.Argument(help="CSV, Parquet or JSON file.")],
    kind: KindOpt = None,
    rejects: Annotated[Path | None, typer.Option(
        help="Also write the refused rows' reasons here (CSV: row, field, reason).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Upsert rewards or challenge templates by id, or append vocabulary values (columns
    kind, value; in code order). All or nothing: any bad row (listed, one line each) imports
    none and exits 2. Values outside the vocabularies are bad rows: import those first."""
    from serving.stores.catalog import import_file

    if not file.is_file():
        raise UserError(f"FILE: no such file {file}")
    store = _store(data_dir)
    try:
        result = import_file(store, file, kind)  # type: ignore[arg-type]
    finally:
        store.close()
    if result.errors:
        for line in _row_lines(result):
            echo_err(line)
        if rejects is not None:
            _write_rejects(rejects, result)
        raise UserError(f"{len({e.row for e in result.errors})} of {result.rows} "
                        f"{result.kind} row(s) refused; nothing imported")
    typer.echo(json.dumps(result.summary()))


@catalog_app.command("list")
@friendly
def catalog_list(
    kind: KindOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    include_all: Annotated[bool, typer.Option("--all", help="Retired items too.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """The catalog: rewards, challenge templates and vocabularies (or one --kind)."""
    kinds = ("rewards", "challenges", "vocabulary")
    if kind is not None and kind not in kinds:
        raise UserError(f"--kind: expected rewards, challenges or vocabulary, got {kind!r}")
    store = _store(data_dir, create=False)
    try:
        out: dict[str, Any] = {"catalog_version": store.version()}
        for k in kinds if kind is None else (kind,):
            if k == "vocabulary":
                out["vocabularies"] = store.vocabulary().as_dict()
            else:
                out[k] = [r.model_dump(mode="json")
                          for r in store.records(k, include_all)]  # type: ignore[arg-type]
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"catalog version {out['catalog_version']}")
    for k in ("rewards", "challenges"):
        if k in out:
            typer.echo(f"\n{k} ({len(out[k])})")
            for r in out[k]:
                typer.echo("  " + "  ".join(str(v) for name, v in r.items()
                                            if name not in ("created_at", "updated_at")))
    for k, values in out.get("vocabularies", {}).items():
        typer.echo(f"\n{k}: {', '.join(values) or '(empty)'}")


@catalog_app.command("retire")
@friendly
def catalog_retire(
    item_id: Annotated[str, typer.Argument(metavar="ID", help="A reward or challenge id.")],
    kind: Annotated[str | None, typer.Option(
        "--kind", help="rewards or challenges, when both have this id.")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Stop serving a reward or challenge template (kept for history; import it again with
    status active to restore it)."""
    if kind is not None and kind not in ("rewards", "challenges"):
        raise UserError(f"--kind: expected rewards or challenges, got {kind!r}")
    store = _store(data_dir, create=False)
    try:
        found = [k for k in ("rewards", "challenges") if (kind is None or k == kind)
                 and store.get(k, item_id) is not None]  # type: ignore[arg-type]
        if not found:
            raise UserError(f"ID: no {kind[:-1] if kind else 'reward or challenge'} "
                            f"{item_id!r} in the catalog")
        if len(found) > 1:
            raise UserError(f"ID: {item_id!r} is both a reward and a challenge: pass --kind")
        record = store.retire(found[0], item_id)  # type: ignore[arg-type]
    finally:
        store.close()
    assert record is not None
    typer.echo(json.dumps({"kind": found[0], **record.model_dump(mode="json")}))
