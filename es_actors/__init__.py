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
    StorageError,
    StoreCorrupted,
    UnknownAggregateType,
    UnknownCommand,
    UserCodeError,
    WriterFenced,
)
from .records import CommandResult, RecordedEvent
from .store import AggregateHandle, AggregateState, Audit, Store, Submission

__all__ = [
    "Aggregate", "AggregateHandle", "AggregateState", "Audit", "Command", "CommandIdReused",
    "CommandRejected", "CommandResult", "CommandTimeout", "ConcurrencyError", "DomainError",
    "DomainRegistry", "EsActorsError", "Event", "InvalidPayload", "Overloaded", "PayloadTooLarge",
    "RecordedEvent", "StorageError", "Store", "StoreConfig", "StoreCorrupted", "Submission",
    "UnknownAggregateType", "UnknownCommand", "UserCodeError", "WriterFenced",
]
