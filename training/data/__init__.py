"""Data in, training sets out: the world folder, point-in-time features, Feast.

``world`` (the world folder's metadata, read in one place), ``features`` (point-in-time member
and item features from the world's history), ``feast_ops`` (apply, materialize), ``datasets``
(training sets from Feast's historical retrieval, split by time).

May import: ``serving.contract``, ``serving.decisioning.candidates``, ``serving.stores``,
``serving.config``. Never reads the simulator's hidden truth.
"""
