"""rewards-reco's runtime: the HTTP service, batch scoring and the contract training shares.

Sub-packages, each with one responsibility (docs/architecture.md has the diagram):

- ``contract``: vocabularies, HTTP schemas, event records, model metadata. Depends on nothing.
- ``decisioning``: candidate rows, reward scoring, ranking rules, the recommender. Pure logic.
- ``stores``: online features (Feast), the event store, API keys, model files and the registry.
- ``api``: routes, authentication, limits, observability.
- ``batch``: offline scoring of every member with the champion models (one process or Dask).
- ``experiments``: uplift experiments (assignment, statistics, reports).

Top-level modules: ``main`` (create_app, lifespan), ``config`` (settings), ``services`` (what a
request needs, built in the lifespan), ``workers`` and ``worker_group`` (several processes).

``serving`` never imports ``training``; training imports serving's contract and decisioning so
both sides build model inputs and scores with the same code.
"""
