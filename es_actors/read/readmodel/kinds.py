"""Projection kinds: how a batch of events is applied to a read model, one handler per kind,
found by the projection's ``kind`` in a registry (a new kind registers its handler; nothing
else changes).

The built-in kinds are ``"sql"`` (:mod:`~es_actors.read.readmodel.sql_kind`) and
``"python"`` (:mod:`~es_actors.read.readmodel.python_kind`). A handler runs inside the
batch's transaction, on the projection's cursor (its ``search_path`` is the projection's
schema); the read model owns the transaction and the checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

import duckdb

from es_actors.domain import DomainRegistry
from es_actors.errors import EsActorsError
from es_actors.read.projection import Projection
from es_actors.storage.local.follower import Batch


class ProjectionHandler(ABC):
    """Applies batches of one projection kind; one instance per read model."""

    #: The ``Projection.kind`` this handler applies.
    kind: ClassVar[str]

    def __init__(self, registry: DomainRegistry) -> None:
        self.registry = registry

    def check(self, p: type[Projection]) -> None:
        """Refuse a declaration this kind cannot run (when the read model opens)."""

    @abstractmethod
    def apply(self, cur: duckdb.DuckDBPyConnection, p: type[Projection], batch: Batch, optimistic: bool = False) -> int:
        """Apply the batch's events on ``cur`` (in an open transaction); return events processed.

        With ``optimistic``, a handler may take a cheaper path that fails when the batch needs
        the full one: the read model then asks :meth:`needs_full_path` and, if so, redoes the
        batch without it."""

    def needs_full_path(self, cur: duckdb.DuckDBPyConnection, p: type[Projection], batch: Batch) -> bool:
        """After an optimistic attempt failed: does the batch itself need the full path (True),
        or is the failure the projection's own (False: it stands)? Asked outside a transaction."""
        return False


H = TypeVar("H", bound=type[ProjectionHandler])
_HANDLERS: dict[str, type[ProjectionHandler]] = {}


def register_kind(handler: H) -> H:
    """Register a handler class for its ``kind`` (usable as a class decorator)."""
    kind = getattr(handler, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise EsActorsError(f"{handler.__name__} must name the projection kind it handles (kind = '...')")
    other = _HANDLERS.get(kind)
    if other is not None and other is not handler:
        raise EsActorsError(f"projection kind {kind!r} already has a handler: {other.__qualname__}")
    _HANDLERS[kind] = handler
    return handler


def handler_class(p: type[Projection]) -> type[ProjectionHandler]:
    """The handler class registered for the projection's kind."""
    handler = _HANDLERS.get(p.kind)
    if handler is None:
        raise EsActorsError(
            f"projection {p.name!r} is of kind {p.kind!r}, which has no registered handler "
            f"(known kinds: {sorted(_HANDLERS)})"
        )
    return handler


def registered_kinds() -> list[str]:
    return sorted(_HANDLERS)
