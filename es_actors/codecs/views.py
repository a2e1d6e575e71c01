"""Client views of stored rows: :class:`RecordedEvent` (one event with its audit columns,
decoded through the registry's upcasters) and :class:`CommandResult` (what a command did)."""

from __future__ import annotations

import json
from datetime import datetime
from operator import itemgetter
from typing import Any, Collection, Iterable, Sequence

import pyarrow as pa

from es_actors.codecs.rows import COL, COLUMNS, event_where, micros_to_datetime
from es_actors.domain import DomainRegistry, Event

_SV, _ET, _PAYLOAD = COL["schema_version"], COL["event_type"], COL["payload"]
_UNSEEN: Any = object()


class RecordedEvent(tuple):  # type: ignore[type-arg]
    """An event as stored: where it lies in the log, and who caused it when.

    Immutable and cheap to build (projections build millions; a tuple made in C): it holds
    where the event is and the event itself; the audit columns (ids, principal,
    recorded_at, metadata) are read from the stored row, or from the batch's columns, when
    first asked for.
    """

    __slots__ = ()

    def __new__(
        cls, partition: int, position: int, aggregate_type: str, aggregate_id: str, version: int, event: Event,
        stored_schema_version: int, src: Any, i: int = -1,
    ) -> "RecordedEvent":
        return tuple.__new__(cls, (partition, position, aggregate_type, aggregate_id, version, event,
                                   stored_schema_version, src, i))

    partition = property(itemgetter(0))
    position = property(itemgetter(1))
    aggregate_type = property(itemgetter(2))
    aggregate_id = property(itemgetter(3))
    version = property(itemgetter(4))
    event = property(itemgetter(5))
    #: The version the event was stored at (``event`` is always the current version, upcast).
    stored_schema_version = property(itemgetter(6))

    def _get(self, name: str) -> Any:
        src, i = self[7], self[8]
        if i < 0:
            return src[COL[name]]
        return src.get(name, i)

    @property
    def event_type(self) -> str:
        return self[5].event_type

    @property
    def event_id(self) -> str:
        return self._get("event_id")

    @property
    def command_id(self) -> str:
        return self._get("command_id")

    @property
    def correlation_id(self) -> str | None:
        return self._get("correlation_id")

    @property
    def causation_id(self) -> str | None:
        return self._get("causation_id")

    @property
    def principal(self) -> str | None:
        return self._get("principal")

    @property
    def recorded_at(self) -> datetime:
        return micros_to_datetime(self._get("recorded_at"))

    @property
    def recorded_at_us(self) -> int:
        """recorded_at as microseconds since the epoch (cheap; for ordering)."""
        return self._get("recorded_at")

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads(self._get("metadata"))

    def __repr__(self) -> str:
        return (
            f"RecordedEvent({self.aggregate_type}/{self.aggregate_id} v{self.version} at "
            f"{self.partition}:{self.position}, {self.event!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return (self[0], self[1], self[5], self.event_id) == (other[0], other[1], other[5], other.event_id)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash((self[0], self[1], self.event_id))

    def __reduce__(self) -> Any:  # pickles as its values, the batch's columns resolved
        return (RecordedEvent, (self[0], self[1], self[2], self[3], self[4], self[5], self[6], self._row(), -1))

    def _row(self) -> tuple[Any, ...]:
        if self[8] < 0:
            return self[7]
        return tuple(self._get(c) for c in COLUMNS)

    @classmethod
    def from_row(cls, row: tuple[Any, ...], registry: DomainRegistry) -> list["RecordedEvent"]:
        """The current events a stored row reads as (usually one; more if an upcaster splits it),
        each carrying the stored row's version and position."""
        sv = row[COL["schema_version"]]
        events = registry.decode(row[COL["event_type"]], sv, row[COL["payload"]], lambda: event_where(*row[:5]))
        return [cls(row[0], row[1], row[2], row[3], row[4], event, sv, row) for event in events]

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, ...]], registry: DomainRegistry) -> list["RecordedEvent"]:
        """:meth:`from_row` over many rows, a row of a current event class validated in place (the
        common case: one pydantic call per row, none of the generic path's per-row calls); any
        other row, or one that does not validate, goes through :meth:`from_row` (upcasters, errors)."""
        classes = registry.decoder.events
        new = tuple.__new__
        out: list[RecordedEvent] = []
        append = out.append
        fast: dict[str, tuple[int, Any] | None] = {}  # event type -> (schema version, its validator's validate_json)
        for row in rows:
            et = row[_ET]
            decode = fast.get(et, _UNSEEN)
            if decode is _UNSEEN:
                ev_cls = classes.get(et)
                # pydantic-core's validator directly: what model_validate_json(text) calls (registry.py does the same)
                decode = fast[et] = None if ev_cls is None else (ev_cls.schema_version,
                                                                 ev_cls.__pydantic_validator__.validate_json)
            sv = row[_SV]
            if decode is not None and decode[0] == sv:
                try:
                    event = decode[1](row[_PAYLOAD])
                except Exception:
                    out.extend(cls.from_row(row, registry))  # raises the error from_row names
                    continue
                append(new(cls, (row[0], row[1], row[2], row[3], row[4], event, sv, row, -1)))
            else:
                out.extend(cls.from_row(row, registry))
        return out

    @classmethod
    def from_table(
        cls, table: pa.Table, registry: DomainRegistry, event_types: Collection[str] | None = None
    ) -> list["RecordedEvent"]:
        """A batch of stored rows as events, in row order, decoded in bulk
        (:class:`es_actors.codecs.event_batch.EventBatch`). ``event_types`` keeps only those."""
        from es_actors.codecs.event_batch import EventBatch  # it builds RecordedEvents: imported when used

        return EventBatch(table, registry, event_types).events()[0]


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
