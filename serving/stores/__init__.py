"""Everything serving reads or writes outside its process.

``features`` (Feast: opening the store, FeatureService contracts, online member features),
``events`` (the event store: events, decisions, exposures) on ``sql`` (SQLite or PostgreSQL
connections, dialects, transactions), ``writer`` (group commit), ``keys`` (API keys),
``catalog`` (the catalog's files), ``registry`` (model bundles and the one atomic champion
download), ``models`` (verified onnxruntime sessions, swapped without downtime).

May import: ``serving.contract`` and ``serving.config``; ``catalog`` builds a
``serving.decisioning.catalog.Catalog``. Never ``serving.api``.
"""
