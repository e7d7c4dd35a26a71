"""Data in, training sets out: import, the event store's history, point-in-time features, Feast.

``imports`` (a program's members and events files into the event store: vectorized validation,
rejects, idempotent chunks), ``history`` (members, events and labelled decisions read back from
the event store, over the data's own calendar), ``features`` (point-in-time member features;
names follow the catalog's vocabulary), ``refresh`` (changed members' current rows to the online
store; one member's values at a time), ``feast_ops`` (apply, materialize), ``datasets``
(training sets from Feast's historical retrieval, split by time), ``world`` (a simulated world's
metadata, for the simulator's own runs).

May import: ``serving.contract``, ``serving.decisioning.candidates``, ``serving.stores``,
``serving.config``. Never reads the simulator's hidden truth.
"""
