"""What ``store.dataset(...)`` reads, decided without Ray: the log pinned at the call, the filters,
and how one piece of it becomes rows of current events (:mod:`es_actors.read.dataset` hands the
pieces to Ray Data).

Pinned: one consistent view per partition at the call (the sealed segments as listed, and the
durable tail rows after them, read now) fixes which positions the dataset holds: each listed
segment's ``first..last``, then the tail rows up to the partition's durable head. Ray Data reads
lazily, maybe long after the call: a segment that a compaction has replaced and collected by
then is read by position range from wherever the log holds those positions now (the consistent
range read every reader uses), so no event is missed or read twice, and nothing written after
the call appears.

Filters: ``aggregate_type`` and ``as_of`` (``recorded_at <= as_of``) hold for stored rows and
their upcast events alike, so they are pushed down to the Parquet scan (row-group statistics
prune). ``event_types`` names current types; the scan keeps the stored types that can read as
one of them (the types themselves and any type with upcasters), and the exact filter runs after
upcasting, as for projections.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.domain import DomainRegistry
from es_actors.errors import EsActorsError
from es_actors.read.readmodel.upcast import relevant_stored_types, upcast_table
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.range_reads import read_range
from es_actors.storage.local.reader import log_views, read_segments
from es_actors.storage.local.segments import Segment, parse_segment_name

#: The dataset's columns: the stored row's (``schema_version`` and ``payload`` those of the
#: current event) and the version the event was stored at, as ``RecordedEvent.stored_schema_version``.
DATASET_SCHEMA = ARROW_SCHEMA.append(pa.field("stored_schema_version", pa.int32(), nullable=False))


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events the dataset keeps. ``stored_types``: the stored types the scan keeps (None: all);
    ``event_types``: the current types kept after upcasting (None: all)."""

    stored_types: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    aggregate_type: str | None = None
    as_of: datetime | None = None  # UTC

    def expression(self) -> ds.Expression | None:
        """The filter on stored rows, for the Parquet scan (None: keep every row)."""
        terms: list[ds.Expression] = []
        if self.stored_types is not None:
            terms.append(ds.field("event_type").isin(list(self.stored_types)))
        if self.aggregate_type is not None:
            terms.append(ds.field("aggregate_type") == self.aggregate_type)
        if self.as_of is not None:
            terms.append(ds.field("recorded_at") <= pa.scalar(self.as_of, ARROW_SCHEMA.field("recorded_at").type))
        if not terms:
            return None
        expr = terms[0]
        for t in terms[1:]:
            expr = expr & t
        return expr

    def stored(self, table: pa.Table) -> pa.Table:
        """The same filter on stored rows in memory (tail rows, range reads)."""
        expr = self.expression()
        return table if expr is None else table.filter(expr)

    def current(self, table: pa.Table) -> pa.Table:
        """The filter on upcast rows: only the event types asked for."""
        if self.event_types is None:
            return table
        return table.filter(pc.is_in(table.column("event_type"), pa.array(list(self.event_types), pa.string())))


@dataclass(frozen=True, slots=True)
class Piece:
    """Positions ``first..last`` of one partition, held by ``path`` when the dataset was planned."""

    partition: int
    first: int
    last: int
    path: str
    size_bytes: int


@dataclass(frozen=True)
class DatasetPlan:
    """The log as the call saw it: the sealed pieces and the durable tail rows after them (filtered)."""

    layout: StoreLayout
    pieces: list[Piece]
    tail: pa.Table
    filter: EventFilter


def event_filter(
    registry: DomainRegistry, event_types: Any = None, aggregate_type: Any = None, as_of: datetime | None = None,
) -> EventFilter:
    """The filters checked: event types as classes or current stored names (unknown names are an
    error naming them), an aggregate class or type name, a timezone-aware moment."""
    if not registry.aggregates:
        raise EsActorsError("store.dataset reads events as the current event classes: open the store with its "
                            "aggregates (Store.open(path, aggregates=[...]))")
    wanted: tuple[str, ...] | None = None
    if event_types is not None:
        items = [event_types] if isinstance(event_types, (str, type)) else list(event_types)
        if not items:
            raise EsActorsError("event_types is empty: give None for events of every type")
        names = [_event_type_name(t) for t in items]
        unknown = sorted({n for n in names if n not in registry.events})
        if unknown:
            raise EsActorsError(f"unknown event types {unknown}: the store's current event types are "
                                f"{sorted(registry.events)} (older stored names read as these)")
        wanted = tuple(dict.fromkeys(names))
    atype: str | None = None
    if aggregate_type is not None:
        atype = aggregate_type if isinstance(aggregate_type, str) else getattr(aggregate_type, "aggregate_type", None)
        if not isinstance(atype, str):
            raise EsActorsError(f"aggregate_type must be an Aggregate class or its type name, not {aggregate_type!r}")
        registry.aggregate(atype)  # UnknownAggregateType naming the registered ones
    if as_of is not None:
        if not isinstance(as_of, datetime):
            raise EsActorsError(f"as_of must be a timezone-aware datetime, not {type(as_of).__name__}")
        if as_of.tzinfo is None:
            raise EsActorsError("as_of must be timezone-aware (recorded_at is UTC)")
        as_of = as_of.astimezone(timezone.utc)
    stored = tuple(relevant_stored_types(registry, wanted)) if wanted is not None else None
    return EventFilter(stored, wanted, atype, as_of)


def _event_type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    name = getattr(t, "event_type", None)
    if isinstance(t, type) and isinstance(name, str):
        return name
    raise EsActorsError(f"event_types holds {t!r}: give Event classes or their stored names")


def plan_dataset(layout: StoreLayout, partitions: int, where: EventFilter) -> DatasetPlan:
    """The pinned view of every partition now (local stores; segments are verified when read)."""
    layout.require_local("datasets")
    pieces: list[Piece] = []
    tails: list[pa.Table] = []
    for p, (segments, tail) in enumerate(log_views(layout, partitions, "datasets")):
        pieces.extend(Piece(p, s.first, s.last, str(s.path), _size(s)) for s in segments)
        tails.append(where.stored(tail))
    tail_rows = pa.concat_tables(tails) if tails else ARROW_SCHEMA.empty_table()
    return DatasetPlan(layout, pieces, tail_rows, where)


def _size(seg: Segment) -> int:
    try:
        return int(os.stat(seg.path).st_size)
    except OSError:
        return 0  # collected meanwhile: only an estimate; the read finds the positions where they are now


def read_piece(layout: StoreLayout, piece: Piece, where: EventFilter) -> pa.Table:
    """The piece's stored rows that pass the filter: from the listed file, or, if a compaction
    collected it since the plan, by position range from wherever the log holds them now."""
    seg = parse_segment_name(Path(piece.path))
    assert seg is not None  # a listed segment's name
    try:
        return read_segments([seg], where.expression())
    except FileNotFoundError:
        return where.stored(read_range(layout, piece.partition, piece.first, piece.last))


_con: duckdb.DuckDBPyConnection | None = None


def current_rows(table: pa.Table, registry: DomainRegistry, where: EventFilter) -> pa.Table:
    """Stored rows as rows of current events (the projections' upcasting: SQL upcasters vectorised
    in DuckDB, the others through the Python chain), keeping the version each was stored at."""
    global _con
    table = table.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA)
    if _con is None:
        _con = duckdb.connect()  # one per worker process, for SQL upcasters
    cur = _con.cursor()
    try:
        up = upcast_table(cur, table, registry)
    finally:
        cur.close()
    stored = up.column("schema_version") if up is table else _stored_versions(table, up, registry)
    out = up.append_column(DATASET_SCHEMA.field("stored_schema_version"), stored)
    return where.current(out.cast(DATASET_SCHEMA))


def _stored_versions(table: pa.Table, up: pa.Table, registry: DomainRegistry) -> pa.ChunkedArray:
    """For each row of ``up`` (the upcast rows of ``table``), the schema_version its stored row had:
    its own for rows that were current, else the older row's at its (partition, position)."""
    pairs = table.group_by(["event_type", "schema_version"]).aggregate([])
    old_mask = None
    for t, v in zip(pairs.column(0).to_pylist(), pairs.column(1).to_pylist()):
        if not registry.decoder.is_current(t, v):
            m = pc.and_(pc.equal(table.column("event_type"), t), pc.equal(table.column("schema_version"), v))
            old_mask = m if old_mask is None else pc.or_(old_mask, m)
    result = up.column("schema_version")
    if old_mask is None:
        return result
    old = table.filter(old_mask)
    for p in pc.unique(old.column("partition")).to_pylist():
        mine = old.filter(pc.equal(old.column("partition"), p))
        idx = pc.index_in(up.column("position"), value_set=mine.column("position").combine_chunks())
        hit = pc.and_(pc.equal(up.column("partition"), p), pc.is_valid(idx))
        result = pc.if_else(hit, mine.column("schema_version").take(pc.fill_null(idx, 0)), result)
    return result


__all__ = ["DATASET_SCHEMA", "DatasetPlan", "EventFilter", "Piece", "current_rows", "event_filter",
           "plan_dataset", "read_piece"]
