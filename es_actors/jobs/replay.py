"""Folding a partition's stored rows into aggregate states, outside the owning actor.

The snapshot and contract-check jobs (``jobs/``) read a partition read-only through the storage
interface (:meth:`~es_actors.storage.api.PartitionReader.read_all`, any backend) and replay it here the way the owner
hydrates: every stored event through ``registry.decode`` (upcaster chains, validation),
then the one fold (:func:`es_actors.domain.fold`) from ``initial_state``. No Ray in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from es_actors.domain import DomainRegistry, fold
from es_actors.errors import StoreCorrupted, UserCodeError
from es_actors.codecs.rows import event_where

#: The columns a replay needs, in the order :func:`iter_event_rows` yields them.
REPLAY_COLUMNS: tuple[str, ...] = (
    "position", "aggregate_type", "aggregate_id", "version", "event_type", "schema_version", "payload", "event_id",
)


def in_position_order(table: pa.Table) -> pa.Table:
    """The table sorted by position (a no-op when it already is, the usual case)."""
    if table.num_rows > 1:
        pos = table.column("position").to_numpy()
        if not np.all(np.diff(pos) > 0):
            return table.sort_by("position")
    return table


def of_type(table: pa.Table, aggregate_type: str) -> pa.Table:
    """Only the rows of one aggregate type."""
    return table.filter(pc.equal(table.column("aggregate_type"), aggregate_type))


def iter_event_rows(table: pa.Table, columns: Sequence[str] = REPLAY_COLUMNS, chunk: int = 50_000) -> Iterator[tuple[Any, ...]]:
    """The table's rows as tuples of ``columns``, converted a chunk at a time (bounded memory)."""
    table = table.select(list(columns))
    for batch in table.to_batches(max_chunksize=chunk):
        yield from zip(*(col.to_pylist() for col in batch.columns))


@dataclass(slots=True)
class FoldedAggregate:
    """One aggregate replayed to the end of what was read."""

    aggregate_type: str
    aggregate_id: str
    state: Any
    version: int = 0  # version of its last event
    position: int = 0  # log position of its last event
    event_id: str = ""  # event_id of its last event (to confirm it is still the one at ``position``)
    events: int = 0  # stored events folded


def fold_rows(
    registry: DomainRegistry, rows: Iterable[tuple[Any, ...]], partition: int
) -> dict[tuple[str, str], FoldedAggregate]:
    """Fold stored rows (``REPLAY_COLUMNS`` order, position order) into one state per aggregate.

    Strict, like the owner's hydration: an event that cannot be read raises
    :class:`~es_actors.upcasting.UnreadableEvent`, a gap in an aggregate's versions
    :class:`StoreCorrupted`, and an exception from ``evolve`` :class:`UserCodeError`; each
    names the event (partition, position, aggregate, version).
    """
    out: dict[tuple[str, str], FoldedAggregate] = {}
    for pos, atype, aid, version, etype, sv, payload, event_id in rows:
        key = (atype, aid)
        agg = registry.aggregate(atype)
        f = out.get(key)
        if f is None:
            f = out[key] = FoldedAggregate(atype, aid, agg.initial_state())
        where = event_where(partition, pos, atype, aid, version)
        if version != f.version + 1:
            raise StoreCorrupted(f"{where}: version {version} follows {f.version}")
        events = registry.decode(etype, sv, payload, where)
        try:
            state = fold(agg, events, f.state)
        except Exception as exc:
            raise UserCodeError(
                f"evolve of {atype} failed on {'/'.join(e.event_type for e in events)} at {where}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        f.state, f.version, f.position, f.event_id = state, version, pos, event_id
        f.events += 1
    return out


def fold_partition_table(
    registry: DomainRegistry, table: pa.Table, partition: int, aggregate_type: str | None = None
) -> dict[tuple[str, str], FoldedAggregate]:
    """:func:`fold_rows` over a partition's table as a reader returns it (optionally one aggregate type only)."""
    if aggregate_type is not None:
        table = of_type(table, aggregate_type)
    return fold_rows(registry, iter_event_rows(in_position_order(table)), partition)
