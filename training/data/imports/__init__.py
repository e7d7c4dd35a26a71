"""Bulk import of a loyalty program's members and events (`rewards import members|events`).

A file (CSV or Parquet) is read a chunk at a time. Each chunk is parsed and validated with column
operations (arrow and numpy masks, never a model per row: a history has millions of rows) under
the API's rules; bad rows go to a rejects file with their row number, the field and the reason;
the chunk's good rows are written in one transaction (``EventStore.import_events`` /
``upsert_members``), so an interrupted import leaves whole chunks and running it again adds only
what is missing (events are idempotent by ``event_id``; profiles are upserted).

``columns`` (cells: parsing and rules), ``validate`` (chunks: the API's rules, ids for rows
without one), ``run`` (files: chunks, rejects file, summary).
"""

from training.data.imports.run import (
    DEFAULT_CHUNK_ROWS,
    ImportSummary,
    import_events_file,
    import_file,
    import_members_file,
    rejects_path,
)
from training.data.imports.validate import check_events, check_members, content_ids

__all__ = ["DEFAULT_CHUNK_ROWS", "ImportSummary", "check_events", "check_members", "content_ids",
           "import_events_file", "import_file", "import_members_file", "rejects_path"]
