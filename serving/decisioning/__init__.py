"""From a member's features to a ranked, explained decision: pure logic, no I/O.

``candidates`` (model input rows, shared with training), ``scoring`` (reward scores and values
from model probabilities: one implementation for the API, batch and evaluation), ``ranking``
(value formula, flow-zone targets), ``rules`` (eligibility, caps, diversity, exploration),
``recommend`` (the catalog and the recommender), ``ids`` (decision and request ids).

May import: ``serving.contract``, numpy, pandas. Models arrive as objects with ``predict``.
"""
