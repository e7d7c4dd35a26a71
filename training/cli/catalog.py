"""`rewards catalog import|list|retire`: the program's rewards, challenge templates and
vocabularies, kept in the event store's database (serving.stores.catalog).

A running server serves what these commands write within REWARDS_CATALOG_REFRESH_SECONDS,
without a restart.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from training.cli.common import DataDirOpt, UserError, _settings, echo_err, friendly

if TYPE_CHECKING:
    from serving.stores.catalog import CatalogStore, ImportResult

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
