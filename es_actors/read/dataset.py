"""The log as a Ray Dataset (``store.dataset(...)``): the Ray edge of :mod:`es_actors.read.dataset_plan`.

The sealed pieces are read by a Ray Data datasource, one read task per group of segments, so
Ray schedules, retries and shows progress for the scan. Not ``ray.data.read_parquet`` over the
listed files: its tasks read exactly the paths they were given, and a dataset runs lazily (or
again), possibly after a compaction has collected a listed file; each of these read tasks finds
the pinned positions where the log holds them then. The durable tail rows read at the call join
as one Arrow block (``from_arrow``), and ``map_batches`` brings every row to its current event
version, as the projections do.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.domain import Aggregate, DomainRegistry
from es_actors.read.dataset_plan import DATASET_SCHEMA, DatasetPlan, EventFilter, Piece, current_rows, read_piece
from es_actors.runtime.cluster import ensure_ray
from es_actors.storage.layout import StoreLayout

#: Roughly how much larger a segment's rows are in memory than its zstd Parquet file (an estimate
#: for Ray Data's block sizing only).
_INFLATION = 4


class LogSegmentsDatasource(Datasource):
    """The pinned sealed pieces of a store's log, read with the dataset's filters pushed down."""

    def __init__(self, layout: StoreLayout, pieces: Sequence[Piece], where: EventFilter) -> None:
        super().__init__()
        self.layout, self.pieces, self.where = layout, list(pieces), where

    def get_name(self) -> str:
        return "EsActorsLog"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(p.size_bytes for p in self.pieces) * _INFLATION

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        """At most ``parallelism`` tasks, each over consecutive pieces (one block per piece)."""
        n = max(1, min(parallelism, len(self.pieces)))
        groups = [self.pieces[i * len(self.pieces) // n:(i + 1) * len(self.pieces) // n] for i in range(n)]
        filtered = self.where.expression() is not None
        tasks = []
        for group in groups:
            if not group:
                continue
            meta = BlockMetadata(
                num_rows=None if filtered else sum(p.last - p.first + 1 for p in group),
                size_bytes=sum(p.size_bytes for p in group) * _INFLATION,
                input_files=tuple(p.path for p in group),
                exec_stats=None,
            )
            tasks.append(ReadTask(_reader(self.layout, group, self.where), meta, schema=ARROW_SCHEMA,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def _reader(layout: StoreLayout, group: list[Piece], where: EventFilter) -> Any:
    def read() -> Iterable[pa.Table]:
        for piece in group:
            yield read_piece(layout, piece, where)

    return read


class _Upcast:
    """``map_batches``' function: stored rows to rows of current events. The aggregate classes travel
    (by reference, like a projector's); the registry is built from them where the batches are."""

    def __init__(self, aggregates: Sequence[type[Aggregate[Any]]], where: EventFilter) -> None:
        self.aggregates, self.where = list(aggregates), where
        self._registry: DomainRegistry | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._registry is None:
            self._registry = DomainRegistry(self.aggregates)
        return current_rows(batch, self._registry, self.where)

    def __getstate__(self) -> dict[str, Any]:
        return {"aggregates": self.aggregates, "where": self.where}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.aggregates, self.where, self._registry = state["aggregates"], state["where"], None


def events_dataset(plan: DatasetPlan, registry: DomainRegistry) -> "ray.data.Dataset":
    """The planned log as a Dataset of current events with their audit columns (``DATASET_SCHEMA``)."""
    ensure_ray(None, include_dashboard=False)
    if not plan.pieces and not plan.tail.num_rows:
        return ray.data.from_arrow(DATASET_SCHEMA.empty_table())  # empty, with its columns
    parts = []
    if plan.pieces:
        parts.append(ray.data.read_datasource(LogSegmentsDatasource(plan.layout, plan.pieces, plan.filter)))
    if plan.tail.num_rows:
        parts.append(ray.data.from_arrow(plan.tail))
    data = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    out = data.map_batches(_Upcast(list(registry.aggregates.values()), plan.filter), batch_format="pyarrow",
                           zero_copy_batch=True)
    # A stored event that cannot be read fails the run as UnreadableEvent naming it (this dataset's own
    # context, shared by what is derived from it), not as Ray Data's generic UserCodeException.
    out.context.raise_original_map_exception = True
    return out


__all__ = ["LogSegmentsDatasource", "events_dataset"]
