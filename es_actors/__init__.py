"""es_actors: event sourcing on Ray, with Parquet append logs you can query with DuckDB."""

from .config import StoreConfig
from .domain import Aggregate, Command, DomainRegistry, Event
from .errors import (
    CommandIdReused,
    CommandRejected,
    CommandTimeout,
    ConcurrencyError,
    DomainError,
    EsActorsError,
    InvalidPayload,
    Overloaded,
    PayloadTooLarge,
    ProjectionHalted,
    ProjectionTimeout,
    QueryFailed,
    QueryRefused,
    StorageError,
    StoreClosed,
    StoreCorrupted,
    UnknownAggregateType,
    UnknownCommand,
    UserCodeError,
    WriterFenced,
)
from .projection import PythonProjection, SqlProjection
from .records import CommandResult, RecordedEvent
from .store import AggregateHandle, AggregateState, Audit, Store, Submission
from .upcasting import StoredEvent, UnreadableEvent, Upcaster, upcaster

__all__ = [
    "Aggregate", "AggregateHandle", "AggregateState", "Audit", "Command", "CommandIdReused",
    "CommandRejected", "CommandResult", "CommandTimeout", "ConcurrencyError", "DomainError",
    "DomainRegistry", "EsActorsError", "Event", "InvalidPayload", "Overloaded", "PayloadTooLarge",
    "ProjectionHalted", "ProjectionTimeout", "PythonProjection", "QueryFailed", "QueryRefused",
    "RecordedEvent", "SqlProjection", "StorageError", "Store", "StoreClosed", "StoreConfig", "StoreCorrupted", "StoredEvent",
    "Submission", "UnknownAggregateType", "UnknownCommand", "UnreadableEvent", "Upcaster", "UserCodeError",
    "WriterFenced", "upcaster",
]
