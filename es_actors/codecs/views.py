"""Client views of stored rows: :class:`RecordedEvent` (one event with its audit columns,
decoded through the registry's upcasters) and :class:`CommandResult` (what a command did)."""

from __future__ import annotations

import json
from datetime import datetime
from operator import itemgetter
from typing import Any, Collection, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from es_actors.codecs.rows import COL, COLUMNS, event_where, micros_to_datetime
from es_actors.domain import DomainRegistry, Event


class _Columns:
    """A batch's Arrow columns, each turned into Python values only when first asked for."""

    __slots__ = ("table", "cache")

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.cache: dict[str, list[Any]] = {}

    def column(self, name: str) -> list[Any]:
        col = self.cache.get(name)
        if col is None:
            arr = self.table.column(name)
            col = self.cache[name] = (arr.cast(pa.int64()) if name == "recorded_at" else arr).to_pylist()
        return col

    def get(self, name: str, i: int) -> Any:
        return self.column(name)[i]


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
    def from_table(
        cls, table: pa.Table, registry: DomainRegistry, event_types: Collection[str] | None = None
    ) -> list["RecordedEvent"]:
        """A batch of stored rows as events, in row order, decoded in bulk: rows at current
        versions are validated one event type at a time in a single pydantic call; older
        rows go through their upcaster chains one by one. ``event_types`` keeps only those."""
        n = table.num_rows
        if n == 0:
            return []
        src = _Columns(table)
        payloads = table.column("payload")
        decoded: list[Any] = [None] * n
        types = table.column("event_type")
        svs = table.column("schema_version")
        pairs = table.select(["event_type", "schema_version"]).group_by(["event_type", "schema_version"]).aggregate([])
        for t, v in zip(pairs.column(0).to_pylist(), pairs.column(1).to_pylist()):
            current = registry.decoder.is_current(t, v)
            if current and event_types is not None and t not in event_types:
                continue  # a current type that was not asked for: never decoded
            idx_arr = pc.indices_nonzero(pc.and_(pc.equal(types, t), pc.equal(svs, v)))
            idx = idx_arr.to_pylist()
            texts = payloads.take(idx_arr).to_pylist()
            if current:
                try:
                    events = registry.list_adapter(t).validate_json("[" + ",".join(texts) + "]")
                    for i, e in zip(idx, events):
                        decoded[i] = (e,)
                    continue
                except Exception:
                    pass  # fall through to one at a time, which names the bad event
            for i, text in zip(idx, texts):
                decoded[i] = registry.decode(t, v, text, _where(src, i))
        out: list[RecordedEvent] = []
        parts, pos, atypes = src.column("partition"), src.column("position"), src.column("aggregate_type")
        aid, ver, versions = src.column("aggregate_id"), src.column("version"), src.column("schema_version")
        new = tuple.__new__
        for i in range(n):
            evs = decoded[i]
            if evs is None:
                continue
            for e in evs:
                if event_types is None or e.event_type in event_types:
                    out.append(new(cls, (parts[i], pos[i], atypes[i], aid[i], ver[i], e, versions[i], src, i)))
        return out


def _where(src: _Columns, i: int) -> str:
    return event_where(*(src.get(c, i) for c in ("partition", "position", "aggregate_type", "aggregate_id", "version")))


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
