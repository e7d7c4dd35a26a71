"""Everything serving reads or writes outside its process.

``features`` (Feast: opening the store, FeatureService contracts, online member features),
``events`` (the event store, the system of record: member profiles, events of every type and
their bulk import, decisions, exposures) on ``sql`` (SQLite or PostgreSQL connections,
dialects, transactions), ``writer`` (group commit), ``keys`` (API keys), ``catalog`` (rewards,
challenge templates and vocabularies as tables in the same database), ``registry`` (model bundles and the one atomic champion
download), ``models`` (verified onnxruntime sessions, swapped without downtime).

May import: ``serving.contract`` and ``serving.config``; ``catalog`` builds a
``serving.decisioning.catalog.Catalog``. Never ``serving.api``.
"""
