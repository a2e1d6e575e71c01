"""The ``"python"`` projection kind: a batch reaches the projection's ``handle(db, events)``
as typed, upcast :class:`~es_actors.codecs.views.RecordedEvent` objects, with a DuckDB
cursor inside the batch's transaction."""

from __future__ import annotations

import duckdb

from es_actors.codecs.views import RecordedEvent
from es_actors.read.projection import Projection, PythonProjection
from es_actors.read.readmodel.kinds import ProjectionHandler, register_kind
from es_actors.read.readmodel.upcast import relevant_rows
from es_actors.storage.local.follower import Batch


@register_kind
class PythonHandler(ProjectionHandler):
    kind = PythonProjection.kind

    def apply(self, cur: duckdb.DuckDBPyConnection, p: type[Projection], batch: Batch, optimistic: bool = False) -> int:
        consumed = p.event_type_names()
        table = relevant_rows(batch.to_table(), self.registry, consumed)
        events = RecordedEvent.from_table(table, self.registry, set(consumed))
        if events:
            p.handle(cur, events)  # type: ignore[attr-defined]  # the kind's contract: PythonProjection.handle
        return len(events)
