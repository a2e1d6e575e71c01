"""The DuckDB edge of the read side: one database file of read models, checkpoints and
dead letters, written by the projection runner and queried read-only (ADR-004).

``<store>/readmodels/readmodels.duckdb`` holds:

- one schema per projection (its tables), and a view per table in ``main``;
- ``es_actors.projections`` (name, version, kind, paused), ``es_actors.checkpoints``
  (projection, partition, position, recorded_at): each batch's rows and its checkpoint
  commit in one transaction, so a redelivered batch is never applied twice;
- ``es_actors.dead_letters``: events parked by projections whose policy is "park";
- ``es_actors.builds`` (versions a backfill built beside), ``es_actors.current`` (the version
  ``main`` shows, once a cutover switched it) and ``es_actors.operations`` (the log of cutovers,
  rollbacks and drops: es_actors.read.versions, ADR-018).

DuckDB lets one process open the file for writing; the projector is that process: each
projection applies its batches on its own cursor and thread, and queries run on their own
cursors (concurrent with projection, MVCC; ADR-017). The connection may only
touch files under the store (``allowed_directories``, external access off, configuration
locked); queries are checked on their parse tree before they run and run in a transaction
that is rolled back (es_actors.read.queries, ADR-010).

Modules: ``database`` (connection, system tables, transactions), ``checkpoints``
(checkpoints, pause flag, status without a projector), ``schemas`` (each projection's
schema), ``current`` (which version of a projection is current), ``kinds`` (the handler
registry) with ``sql_kind`` and ``python_kind``, ``upcast`` (older rows to current versions), ``dead_letters``, and ``model`` (the
:class:`ReadModel` that ties them together in transactions).
"""

from es_actors.errors import QueryFailed, QueryRefused
from es_actors.read.queries import run_query
from es_actors.read.readmodel import python_kind, sql_kind  # noqa: F401  (register the built-in kinds)
from es_actors.read.readmodel.checkpoints import committed_status
from es_actors.read.readmodel.database import BatchWithdrawn, connect_restricted, readmodel_path
from es_actors.read.readmodel.kinds import ProjectionHandler, register_kind, registered_kinds
from es_actors.read.readmodel.model import ReadModel
from es_actors.read.readmodel.upcast import upcast_table

__all__ = [
    "ReadModel", "BatchWithdrawn", "ProjectionHandler", "register_kind", "registered_kinds", "committed_status",
    "connect_restricted", "readmodel_path", "upcast_table", "run_query", "QueryFailed", "QueryRefused",
]
