"""The event store: the system of record of a loyalty program, and the service's log.

Everything a model learns from is here: member profiles, every engagement event, the decisions
served and experiment exposures. It is filled three ways through one schema: `rewards import`
(a program's history, in chunks), the API (``/v1/events``, ``PUT /v1/members/{id}``) and the
simulator (which writes through the import path). SQLite (WAL) by default, PostgreSQL in
production.

``schema`` (tables, value conventions, upgrades of older stores), ``records`` (profiles, bulk
imports, the frames features and training read, the decision log), ``store`` (the API's writes
and the business rules' queries; ``open_event_store``).
"""

from serving.stores.events.store import EventStore, SqlEventStore, open_event_store

__all__ = ["EventStore", "SqlEventStore", "open_event_store"]
