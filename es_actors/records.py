"""The stored event row: its columns, its Arrow schema, and its typed view for clients.

Users query these columns directly (DuckDB, Polars, Spark), so names and types are a
public contract. ``position`` (not ``offset``, a reserved word in DuckDB) is gapless per
partition; ``version`` is gapless per aggregate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import pyarrow as pa

from .domain import DomainRegistry, Event

# Row layout (tuples, in this order) used in the write-ahead tail and in memory.
COLUMNS: tuple[str, ...] = (
    "partition",
    "position",
    "aggregate_type",
    "aggregate_id",
    "version",
    "event_type",
    "schema_version",
    "event_id",
    "command_id",
    "command_digest",
    "correlation_id",
    "causation_id",
    "principal",
    "recorded_at",
    "payload",
    "metadata",
)
COL = {name: i for i, name in enumerate(COLUMNS)}

ARROW_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("aggregate_type", pa.string(), nullable=False),
        pa.field("aggregate_id", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("command_id", pa.string(), nullable=False),
        pa.field("command_digest", pa.string(), nullable=False),
        pa.field("correlation_id", pa.string()),
        pa.field("causation_id", pa.string()),
        pa.field("principal", pa.string()),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("payload", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
    ]
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).replace(microsecond=us % 1_000_000)


def rows_to_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """Rows (tuples in ``COLUMNS`` order, recorded_at in epoch microseconds) to an Arrow table."""
    cols = list(zip(*rows)) if rows else [[] for _ in COLUMNS]
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(cols, ARROW_SCHEMA)], schema=ARROW_SCHEMA
    )


def table_to_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """Inverse of :func:`rows_to_table`, recorded_at back to epoch microseconds."""
    table = table.select(list(COLUMNS))
    cols = [c.to_pylist() for c in table.columns]
    cols[COL["recorded_at"]] = table.column("recorded_at").cast(pa.int64()).to_pylist()
    return list(zip(*cols))


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: where it lies in the log, and who caused it when."""

    partition: int
    position: int
    aggregate_type: str
    aggregate_id: str
    version: int
    event: Event
    event_id: str
    command_id: str
    correlation_id: str | None
    causation_id: str | None
    principal: str | None
    recorded_at: datetime
    metadata: dict[str, Any]

    @property
    def event_type(self) -> str:
        return self.event.event_type

    #: The version the event was stored at (``event`` is always the current version, upcast).
    stored_schema_version: int = 0

    @classmethod
    def from_row(cls, row: tuple[Any, ...], registry: DomainRegistry) -> list["RecordedEvent"]:
        """The current events a stored row reads as (usually one; more if an upcaster splits it),
        each carrying the stored row's version and position."""
        where = f"partition {row[0]} position {row[1]} ({row[2]}/{row[3]} version {row[4]})"
        events = registry.decode(row[COL["event_type"]], row[COL["schema_version"]], row[COL["payload"]], where)
        recorded_at = micros_to_datetime(row[COL["recorded_at"]])
        metadata = json.loads(row[COL["metadata"]])
        return [
            cls(
                partition=row[0],
                position=row[1],
                aggregate_type=row[2],
                aggregate_id=row[3],
                version=row[4],
                event=event,
                event_id=row[COL["event_id"]],
                command_id=row[COL["command_id"]],
                correlation_id=row[COL["correlation_id"]],
                causation_id=row[COL["causation_id"]],
                principal=row[COL["principal"]],
                recorded_at=recorded_at,
                metadata=metadata,
                stored_schema_version=row[COL["schema_version"]],
            )
            for event in events
        ]


class CommandResult:
    """What an accepted command did: the aggregate's new version and the events it appended.

    Events are decoded from their stored rows on first access: a submitter that only needs
    the version (the common case) does not pay for decoding payloads.
    """

    __slots__ = ("aggregate_type", "aggregate_id", "command_id", "version", "duplicate", "_rows", "_registry", "_events")

    def __init__(
        self,
        aggregate_type: str,
        aggregate_id: str,
        command_id: str,
        version: int,
        rows: Sequence[tuple[Any, ...]],
        registry: DomainRegistry,
        duplicate: bool = False,
    ) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.command_id = command_id
        self.version = version
        self.duplicate = duplicate
        self._rows = rows
        self._registry = registry
        self._events: tuple[RecordedEvent, ...] | None = None

    @property
    def events(self) -> tuple[RecordedEvent, ...]:
        if self._events is None:
            self._events = tuple(e for r in self._rows for e in RecordedEvent.from_row(r, self._registry))
        return self._events

    @property
    def positions(self) -> tuple[tuple[int, int], ...]:
        """(partition, position) of each appended event, for read-your-writes."""
        return tuple((r[COL["partition"]], r[COL["position"]]) for r in self._rows)

    def __repr__(self) -> str:
        return (
            f"CommandResult({self.aggregate_type}/{self.aggregate_id}, version={self.version}, "
            f"events={[r[COL['event_type']] for r in self._rows]}, positions={list(self.positions)}, "
            f"command_id={self.command_id!r}, duplicate={self.duplicate})"
        )
