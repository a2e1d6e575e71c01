"""The pure domain core: aggregates as deciders (``initial_state``, ``decide``, ``evolve``),
their commands and events, upcasting of older stored events, the registry that resolves stored
names to classes, and the one fold every read path uses.

Owns: what an event sourced model *is*. May import: ``es_actors.errors`` and pydantic only;
never Ray, DuckDB, pyarrow or files (checked by import-linter and a test in a fresh interpreter).
"""

from es_actors.domain.fold import fold
from es_actors.domain.model import Aggregate, Command, Event
from es_actors.domain.registry import DomainRegistry
from es_actors.domain.upcasting import StoredEvent, UnreadableEvent, Upcaster, upcaster

__all__ = [
    "Aggregate", "Command", "DomainRegistry", "Event", "fold", "StoredEvent", "UnreadableEvent", "Upcaster", "upcaster",
]
