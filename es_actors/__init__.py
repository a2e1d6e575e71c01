"""es_actors: event sourcing on Ray, with Parquet append logs you can query with DuckDB."""

from typing import TYPE_CHECKING

from es_actors.config import StoreConfig
from es_actors.domain import Aggregate, Command, DomainRegistry, Event
from es_actors.errors import (
    CommandIdReused,
    CommandRefused,
    CommandRejected,
    CommandTimeout,
    ConcurrencyError,
    CutoverRefused,
    DomainError,
    EsActorsError,
    InterceptorFailed,
    InvalidPayload,
    Overloaded,
    PayloadTooLarge,
    ProjectionHalted,
    ProjectionStalled,
    ProjectionTimeout,
    QueryFailed,
    QueryRefused,
    PartitionDamaged,
    QueryTimeout,
    QueryTooLarge,
    StorageError,
    StoreClosed,
    StoreCorrupted,
    StoreFormatOutdated,
    UnknownAggregateType,
    UnknownCommand,
    UserCodeError,
    WriterFenced,
)
from es_actors.domain.upcasting import StoredEvent, UnreadableEvent, Upcaster, upcaster

# The domain core above needs neither Ray, DuckDB nor pyarrow: code that only defines aggregates
# (and its tests) imports them without loading the runtime. The rest loads on first use; type
# checkers see the real classes.
if TYPE_CHECKING:
    from es_actors.codecs.views import CommandResult, RecordedEvent
    from es_actors.read.projection import PythonProjection, SqlProjection
    from es_actors.store import AggregateHandle, AggregateState, Audit, Store, Submission
    from es_actors.write.interceptors import CommandInterceptor, InterceptContext, PriorCommand
    from es_actors.write.protocol import CommandEnvelope, ImportEnvelope

_LAZY = {
    "PythonProjection": "read.projection", "SqlProjection": "read.projection",
    "CommandResult": "codecs.views", "RecordedEvent": "codecs.views",
    "CommandInterceptor": "write.interceptors", "InterceptContext": "write.interceptors",
    "PriorCommand": "write.interceptors", "CommandEnvelope": "write.protocol", "ImportEnvelope": "write.protocol",
    "AggregateHandle": "store", "AggregateState": "store", "Audit": "store", "Store": "store", "Submission": "store",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'es_actors' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # once
    return value


def upgrade_store(path: str) -> "object":
    """Upgrade a store to the current format (explicit, with no writer running); see ADR-009."""
    from es_actors.storage.local.upgrade import upgrade_store as run

    return run(path)


def repair_store(path: str) -> "object":
    """Quarantine damage, keep every valid event, record lost positions; see ADR-009."""
    from es_actors.storage.local.repair import repair_store as run

    return run(path)


def accept_loss(path: str, principal: str, reason: str, partition: int | None = None) -> list:
    """Record an operator's acceptance of a repaired loss, so its partition takes commands again."""
    from es_actors.storage.local.repair import accept_loss as run

    return run(path, principal, reason, partition)

__all__ = [
    "accept_loss", "Aggregate", "AggregateHandle", "AggregateState", "Audit", "Command", "CommandEnvelope", "CommandIdReused",
    "CommandInterceptor", "CommandRefused", "CommandRejected", "CommandResult", "CommandTimeout", "ConcurrencyError", "CutoverRefused", "DomainError",
    "DomainRegistry", "EsActorsError", "Event", "ImportEnvelope", "InterceptContext", "InterceptorFailed", "InvalidPayload", "Overloaded", "PartitionDamaged",
    "PayloadTooLarge", "PriorCommand", "ProjectionHalted", "ProjectionStalled", "ProjectionTimeout", "PythonProjection", "QueryFailed",
    "QueryRefused", "QueryTimeout", "QueryTooLarge", "RecordedEvent", "repair_store", "SqlProjection",
    "StorageError", "Store", "StoreClosed", "StoreConfig", "StoreCorrupted", "StoredEvent",
    "StoreFormatOutdated", "Submission", "UnknownAggregateType", "UnknownCommand", "UnreadableEvent",
    "Upcaster", "upcaster", "upgrade_store", "UserCodeError", "WriterFenced",
]
