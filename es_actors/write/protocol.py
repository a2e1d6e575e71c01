"""The write protocol: the messages a client sends a partition actor, and what it answers.

A batch is a list of envelopes (:class:`CommandEnvelope` or :class:`ImportEnvelope`); the
answer is one :class:`ItemResult` per envelope, in order, one shape for every outcome
(accepted, a duplicate answered from the dedup record, refused). Ray calls carry these
objects; the direct link (es_actors/write/direct_link.py, the same-node hot path) carries their
wire form, plain tuples made and read only by the four functions at the end of this module.

Slotted dataclasses with an explicit ``__reduce__`` (the fields as one tuple): the cheapest
typed form measured (benchmarks/protocol_cost.py; a ``NamedTuple`` pickles at ~2x, a slotted
dataclass without ``__reduce__`` at ~3x the cost). What each field may hold is checked, per
command, by :func:`es_actors.write.envelope.validate_envelope`. Free of Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar, Sequence, Union

Row = tuple[Any, ...]  # a stored event row (es_actors.codecs.rows.EVENT_SCHEMA, columns by COL)


@dataclass(slots=True)
class CommandEnvelope:
    """One command and everything that travels with it: which aggregate, what is asked
    (``command_type`` and its ``payload`` as JSON text), the optimistic-concurrency check, the
    idempotency key, and the audit fields stored on every event it appends."""

    kind: ClassVar[str] = "command"
    aggregate_type: str
    aggregate_id: str
    command_id: str
    command_type: str
    payload: str  # the command as JSON text (pydantic's serialization)
    expected_version: int | None = None
    principal: str | None = None
    correlation_id: str | None = None  # defaults to command_id when stored
    causation_id: str | None = None  # defaults to command_id when stored
    reason: str | None = None
    metadata: dict[str, Any] | None = None  # a JSON object, stored with every event

    def __reduce__(self) -> tuple[Any, ...]:
        return (CommandEnvelope, command_fields(self))


#: A command envelope's fields in constructor order, as one tuple (C speed): the one list of
#: them that pickling, the wire form and the interceptors' copies share.
command_fields: Any = attrgetter(
    "aggregate_type", "aggregate_id", "command_id", "command_type", "payload", "expected_version", "principal",
    "correlation_id", "causation_id", "reason", "metadata",
)


@dataclass(slots=True)
class ImportedEvent:
    """One event of an import, as its source recorded it."""

    event_type: str
    payload: str  # JSON text
    occurred_at: str | None = None  # ISO 8601, kept in the stored metadata

    def __reduce__(self) -> tuple[Any, ...]:
        return (ImportedEvent, (self.event_type, self.payload, self.occurred_at))


@dataclass(slots=True)
class ImportEnvelope:
    """Events recorded elsewhere, appended to one aggregate as one command (checked as its
    aggregate would produce them), with the same envelope fields as a command."""

    kind: ClassVar[str] = "import"
    aggregate_type: str
    aggregate_id: str
    command_id: str
    events: list[ImportedEvent]
    expected_version: int | None = None
    principal: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    reason: str | None = None
    metadata: dict[str, Any] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (ImportEnvelope, (
            self.aggregate_type, self.aggregate_id, self.command_id, self.events,
            self.expected_version, self.principal, self.correlation_id, self.causation_id, self.reason, self.metadata,
        ))


# What a batch holds: one envelope per command.
Envelope = Union[CommandEnvelope, ImportEnvelope]
BatchItem = Envelope


@dataclass(slots=True)
class ItemResult:
    """The outcome of one envelope of a batch.

    Accepted: ``version`` is the aggregate's version after it, ``rows`` the events it appended.
    Duplicate (a retry of an accepted command id): the same, from the first run, with
    ``duplicate`` set. Refused: ``error`` says why (``version`` 0, no rows); nothing of it
    was written.
    """

    version: int = 0
    rows: Sequence[Row] = ()
    duplicate: bool = False
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def refused(cls, error: BaseException) -> "ItemResult":
        return cls(0, (), False, error)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.error is None and not self.duplicate:  # the common case, in fewer bytes and calls
            return (ItemResult, (self.version, self.rows))
        return (ItemResult, (self.version, self.rows, self.duplicate, self.error))


class BatchResults(list):  # type: ignore[type-arg]
    """A batch's answer: one :class:`ItemResult` per envelope, in order.

    Pickled as columns (versions, rows, and the few duplicates and refusals apart): the
    actor, the busier side, then pays what plain tuples cost (~0.3 us per result instead of
    ~0.6 us for each result's own ``__reduce__``); the client rebuilds the results.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        versions = [r.version for r in self]
        rows = [r.rows for r in self]
        unusual = {i: (r.duplicate, r.error) for i, r in enumerate(self) if r.error is not None or r.duplicate}
        return (_results_from_columns, (versions, rows, unusual))


def _results_from_columns(
    versions: list[int], rows: list[Sequence[Row]], unusual: dict[int, tuple[bool, BaseException | None]]
) -> BatchResults:
    out = BatchResults(map(ItemResult, versions, rows))
    for i, (duplicate, error) in unusual.items():
        out[i].duplicate, out[i].error = duplicate, error
    return out


__all__ = ["BatchItem", "BatchResults", "CommandEnvelope", "Envelope", "ImportEnvelope", "ImportedEvent", "ItemResult", "Row"]


# -- the direct link's wire form ---------------------------------------------------------------
# Over the direct link (same node, the hot path) a batch travels as plain tuples: pickling a
# class costs a lookup of its module and name on both sides of every call, which for a lone
# writer's batch of one was ~3 us of a ~30 us round trip (benchmarks/protocol_cost.py). These
# four functions are the only place that reads the tuples; each side turns them back into the
# typed messages above at once. Ray calls carry the typed messages themselves.

_COMMAND, _IMPORT = "C", "I"


def batch_to_wire(items: Sequence[Envelope]) -> list[Any]:
    """The batch as plain tuples (anything that is not an envelope travels as it is, and the
    partition's envelope check refuses it by name)."""
    out: list[Any] = []
    for e in items:
        if type(e) is CommandEnvelope:
            out.append((_COMMAND, *command_fields(e)))
        elif type(e) is ImportEnvelope:
            events = e.events
            wire_events = [(x.event_type, x.payload, x.occurred_at) for x in events] if isinstance(events, list) else events
            out.append((_IMPORT, e.aggregate_type, e.aggregate_id, e.command_id, wire_events, e.expected_version,
                        e.principal, e.correlation_id, e.causation_id, e.reason, e.metadata))
        else:
            out.append(e)
    return out


def batch_from_wire(wire: Sequence[Any]) -> list[Any]:
    """The typed envelopes of a batch in wire form (what is not one stays as it is, for the
    envelope check to refuse by name)."""
    out: list[Any] = []
    for t in wire:
        if type(t) is tuple and len(t) == 12 and t[0] == _COMMAND:
            out.append(CommandEnvelope(*t[1:]))
        elif type(t) is tuple and len(t) == 11 and t[0] == _IMPORT:
            events = t[4]
            if isinstance(events, list) and all(type(x) is tuple and len(x) == 3 for x in events):
                events = [ImportedEvent(*x) for x in events]
            out.append(ImportEnvelope(t[1], t[2], t[3], events, *t[5:]))
        else:
            out.append(t)
    return out


def results_to_wire(results: Sequence[ItemResult]) -> list[tuple[Any, ...]]:
    """A batch's results as plain tuples: (version, rows), or with ``duplicate`` and ``error``."""
    return [(r.version, r.rows) if r.error is None and not r.duplicate else (r.version, r.rows, r.duplicate, r.error)
            for r in results]


def results_from_wire(wire: Sequence[tuple[Any, ...]]) -> list[ItemResult]:
    return [ItemResult(*t) for t in wire]
