"""Everything serving reads or writes outside its process.

``online`` and ``feature_store`` (Feast: online features, FeatureService contracts),
``events`` (the event store: SQLite or PostgreSQL, events, decisions, exposures), ``writer``
(group commit), ``keys`` (API keys), ``registry`` (model bundles and the one atomic champion
download), ``models`` (verified onnxruntime sessions, swapped without downtime).

May import: ``serving.contract``; never ``decisioning`` or ``api``.
"""
