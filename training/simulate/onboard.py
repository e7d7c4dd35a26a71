"""The simulated population joins the product the way a real program does: by import.

`rewards simulate` writes the world's import files (``<world>/program/``: members and events,
see training/simulate/generate/program.py) and hands them to the same import functions as
`rewards import members|events`. Nothing downstream reads the world folder: the features, the
labels and the serving answers all come from the event store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.simulate.generate.world import PROGRAM_DIR


def program_files(world_dir: Path) -> dict[str, Path]:
    """The import files of a simulated world, by kind, in import order."""
    folder = Path(world_dir) / PROGRAM_DIR
    return {"vocabulary": folder / "vocabulary.json", "rewards": folder / "rewards.parquet",
            "challenges": folder / "challenges.parquet", "members": folder / "members.parquet",
            "events": folder / "events.parquet"}


def onboard(world_dir: Path, events_url: str, *, progress: bool = True) -> dict[str, Any]:
    """Import the world's catalog (vocabulary, rewards, challenges), members then events into
    the stores at ``events_url``; a summary by kind. Idempotent, like every import."""
    from serving.stores.catalog import import_file, open_catalog_store
    from serving.stores.events import open_event_store
    from training.data.imports import import_events_file, import_members_file

    files = program_files(world_dir)
    out: dict[str, Any] = {}
    catalog = open_catalog_store(events_url)
    try:
        for kind in ("vocabulary", "rewards", "challenges"):
            result = import_file(catalog, files[kind], kind)
            if result.errors:
                e = result.errors[0]
                raise ValueError(f"{files[kind]}: row {e.row}: {e.field}: {e.reason}")
            out[kind] = result
    finally:
        catalog.close()
    store = open_event_store(events_url)
    try:
        out["members"] = import_members_file(files["members"], store, progress=progress)
        out["events"] = import_events_file(files["events"], store, progress=progress)
    finally:
        store.close()
    return out


def summaries(imported: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The onboard result as plain dicts (catalog results and event imports alike)."""
    return {kind: (r.as_dict() if hasattr(r, "as_dict") else r.summary())
            for kind, r in imported.items()}
