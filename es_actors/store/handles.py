"""Aggregate handles: one aggregate's commands, state and history, as a user holds them.

A handle talks to its store only through the small interface below (:class:`HandleBackend`,
which :class:`~es_actors.store.Store` implements): send a command or an import, find the
owning actor, read the history. It never reaches into the store's internals.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Iterator, Protocol, Sequence, TypeVar

from es_actors.codecs.views import CommandResult, RecordedEvent
from es_actors.config import StoreConfig
from es_actors.domain import Command, DomainRegistry, Event
from es_actors.errors import CommandTimeout
from es_actors.store.submissions import Audit
from es_actors.store.history_ranges import check_version
from es_actors.store.time_travel import check_point_in_time, fold_history_until


S = TypeVar("S")


@dataclass(frozen=True)
class AggregateState(Generic[S]):
    version: int
    state: S


class HandleBackend(Protocol):
    """What an :class:`AggregateHandle` needs from its store (internal to es_actors)."""

    registry: DomainRegistry
    config: StoreConfig

    def send_command(
        self, aggregate_type: str, aggregate_id: str, command: Command, expected_version: int | None,
        command_id: str | None, audit: Audit, timeout: float | None,
    ) -> CommandResult: ...

    def send_command_async(
        self, aggregate_type: str, aggregate_id: str, command: Command, expected_version: int | None,
        command_id: str | None, audit: Audit,
    ) -> "Future[CommandResult]": ...

    def send_import(
        self, aggregate_type: str, aggregate_id: str, events: Sequence[Event],
        occurred_at: Sequence[datetime | str | None] | None, expected_version: int, command_id: str | None,
        audit: Audit, timeout: float | None,
    ) -> CommandResult: ...

    def owning_actor(self, aggregate_type: str, aggregate_id: str, read_only_error: str | None = None) -> Any: ...

    def history(
        self, aggregate_type: str, aggregate_id: str, *, from_version: int = 1, to_version: int | None = None,
        limit: int | None = None, backwards: bool = False,
    ) -> list[RecordedEvent]: ...

    def iter_history(
        self, aggregate_type: str, aggregate_id: str, *, from_version: int = 1, to_version: int | None = None,
        limit: int | None = None, backwards: bool = False, page_size: int = 1000,
    ) -> Iterator[RecordedEvent]: ...


class AggregateHandle(Generic[S]):
    """A client handle for one aggregate: submit commands, read its state and history."""

    def __init__(self, store: HandleBackend, aggregate_type: str, aggregate_id: str) -> None:
        self.store = store
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id

    def __repr__(self) -> str:
        return f"AggregateHandle({self.aggregate_type}/{self.aggregate_id})"

    def submit(
        self,
        command: Command,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        principal: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reason: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Decide and durably append; returns the new version and the events with their positions.

        Raises the command's error: InvalidPayload (naming the field) before anything is sent,
        a rejection from the actor, StoreClosed after close(), CommandTimeout if no answer."""
        audit = Audit(principal, correlation_id, causation_id, reason, {} if metadata is None else metadata)
        return self.store.send_command(
            self.aggregate_type, self.aggregate_id, command, expected_version, command_id, audit, timeout
        )

    def submit_async(
        self,
        command: Command,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
        principal: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reason: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> "Future[CommandResult]":
        """Like :meth:`submit`, returning a ``concurrent.futures.Future`` at once; every error
        (an invalid field, StoreClosed, a rejection) arrives through the Future."""
        audit = Audit(principal, correlation_id, causation_id, reason, {} if metadata is None else metadata)
        return self.store.send_command_async(
            self.aggregate_type, self.aggregate_id, command, expected_version, command_id, audit
        )

    async def asubmit(self, command: Command, *, timeout: float | None = None, **options: Any) -> CommandResult:
        """Awaitable :meth:`submit` for asyncio code (same keywords, same CommandTimeout)."""
        fut = self.submit_async(command, **options)
        wait_s = self.store.config.submit_timeout_s if timeout is None else timeout
        try:
            # shield: a timeout must not cancel the command's Future; the command may still land
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), wait_s)
        except asyncio.TimeoutError:
            raise CommandTimeout(
                "no answer in time; the outcome is unknown: resubmit with the same command_id to learn it"
            ) from None

    def import_events(
        self,
        events: Sequence[Event],
        *,
        expected_version: int,
        occurred_at: Sequence[datetime | str | None] | None = None,
        command_id: str | None = None,
        principal: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reason: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Append already-decided events (history from another store) through the owning actor.

        Same guarantees as a command: expected version, idempotency by command id, validation.
        ``recorded_at`` is the append time; each event's original time goes to metadata.occurred_at.
        """
        audit = Audit(principal, correlation_id, causation_id, reason, {} if metadata is None else metadata)
        return self.store.send_import(
            self.aggregate_type, self.aggregate_id, events, occurred_at, expected_version, command_id, audit, timeout
        )

    def state(self) -> AggregateState[S]:
        """Current version and state, from the owning actor (consistent with acknowledged commands)."""
        from es_actors.runtime.cluster import actor_get

        actor = self.store.owning_actor(
            self.aggregate_type, self.aggregate_id,
            read_only_error="state needs an open (writable) store; read-only stores offer history",
        )
        version, state = actor_get(actor.get_state.remote(self.aggregate_type, self.aggregate_id))
        return AggregateState(version, state)

    def history(
        self, *, from_version: int = 1, to_version: int | None = None, limit: int | None = None,
        backwards: bool = False,
    ) -> list[RecordedEvent]:
        """Durable events with ``from_version <= version <= to_version``, oldest first (newest first if
        ``backwards``), at most ``limit``: see :meth:`Store.history`."""
        return self.store.history(self.aggregate_type, self.aggregate_id, from_version=from_version,
                                  to_version=to_version, limit=limit, backwards=backwards)

    def iter_history(
        self, *, from_version: int = 1, to_version: int | None = None, limit: int | None = None,
        backwards: bool = False, page_size: int = 1000,
    ) -> Iterator[RecordedEvent]:
        """:meth:`history` streamed ``page_size`` events at a time (very long aggregates)."""
        return self.store.iter_history(self.aggregate_type, self.aggregate_id, from_version=from_version,
                                       to_version=to_version, limit=limit, backwards=backwards, page_size=page_size)

    def passivate(self) -> bool:
        """Drop this aggregate's state from its actor's memory (it rehydrates on next use)."""
        from es_actors.runtime.cluster import actor_get

        actor = self.store.owning_actor(self.aggregate_type, self.aggregate_id)
        return bool(actor_get(actor.passivate.remote(self.aggregate_type, self.aggregate_id)))

    def state_at(self, *, version: int | None = None, as_of: datetime | None = None) -> AggregateState[S]:
        """The aggregate as it was at ``version``, or as the store knew it at ``as_of`` (UTC-aware).

        Folds the durable history (no actor involved, so it also works on a read-only store): up to
        ``version`` it reads versions 1..version only; for ``as_of`` it streams pages and stops at
        the first event recorded after the moment.
        """
        check_point_in_time(version, as_of)
        if version is not None:
            check_version(version)  # a bad version: EsActorsError naming it, nothing read
        agg = self.store.registry.aggregate(self.aggregate_type)
        history: Iterator[RecordedEvent] = (
            iter(()) if version == 0
            else self.iter_history(to_version=version, page_size=min(version, 1000)) if version is not None
            else self.iter_history()
        )
        at, state = fold_history_until(
            agg, history, version=version, as_of=as_of, name=f"{self.aggregate_type}/{self.aggregate_id}"
        )
        return AggregateState(at, state)
