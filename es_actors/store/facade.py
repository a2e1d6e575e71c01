"""The application edge: open a store, get aggregate handles, submit commands, read back.

    store = Store.open("./bank-store", aggregates=[BankAccount])
    acct = store.aggregate(BankAccount, "acc-1")
    result = acct.submit(Deposit(amount=100), expected_version=1, principal="alice")
    store.projections.wait_for("balances", result)   # the projector: store.projections
    store.admin.stats()                                # the partition actors: store.admin
    store.close()  # seals the tail: plain DuckDB then sees every event

Every command is checked per command before it is queued (es_actors/write/envelope.py): a bad one
fails alone, with InvalidPayload naming the field, and the partition actor checks it again.

This module holds the Store's lifecycle (open, close, shutdown), the write path's client
side (handles, bulk submission, the batch items) and reading the log; the projector's
operations live in ``projections.py`` (``store.projections``), the partition actors' in
``admin.py`` (``store.admin``), queries in ``query.py``, handles in ``handles.py``. The
Store's older names for those (``store.wait_for``, ``store.stats``, ...) delegate to them.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Sequence

from es_actors.write.client import ResultSlot
from es_actors.config import StoreConfig
from es_actors.domain import Aggregate, Command, DomainRegistry, Event
from es_actors.write.envelope import check_text, validate_envelope
from es_actors.write.protocol import BatchItem, CommandEnvelope, ImportedEvent, ImportEnvelope, ItemResult
from es_actors.errors import CommandTimeout, EsActorsError, InvalidPayload, Overloaded, StoreClosed
from es_actors.codecs.views import CommandResult
from es_actors.storage.layout import StoreDescriptor, StoreLayout, partition_of
from es_actors.store.admin import Admin
from es_actors.store.handles import AggregateHandle
from es_actors.store.projections import Projections
from es_actors.store.reading import LogReading
from es_actors.store.shortcuts import StoreShortcuts
from es_actors.store.submissions import Audit, Submission, new_command_id
from es_actors.store.submissions import aggregate_type_name as _aggregate_type
from es_actors.store.submissions import failed as _failed


def _release_reads(store: "Store") -> None:
    """Drop what this process caches to read the store's log (mapped index runs, parsed tails):
    a deleted store's disk space is freed; a later read of it builds them again."""
    from es_actors.storage.local import tail_cursor
    from es_actors.storage.local.stream_index import reading

    reading.release(store.layout.root)
    tail_cursor.release(store.layout.root)


def _metadata_or_none(metadata: Any) -> Any:
    """Metadata as it travels: None when empty; anything else as given (the envelope check
    refuses a wrong type instead of it being dropped)."""
    return None if metadata is None or (type(metadata) is dict and not metadata) else metadata


class Store(LogReading, StoreShortcuts):
    """A handle on one event store: a directory of partition logs and the actors that own them.

    ``store.projections`` holds the projector's operations (:class:`Projections`), ``store.admin``
    the partition actors' (:class:`Admin`); the older top-level names delegate to them."""

    def __init__(
        self,
        layout: StoreLayout,
        descriptor: StoreDescriptor,
        registry: DomainRegistry,
        config: StoreConfig,
        actors: list[Any] | None,
    ) -> None:
        self.layout = layout
        self.descriptor = descriptor
        self.registry = registry
        self.config = config
        self._actors = actors
        self._created: list[bool] = [False] * len(actors or ())  # per actor: did this Store start it?
        self._closed = False
        self.projections = Projections(self)  # the projector's operations: store.projections.wait_for(...)
        self.admin = Admin(self)  # the partition actors' operations: store.admin.stats(), .seal(), ...
        self._channels: list[Any] = []
        if actors is not None:
            from es_actors.write.client import PartitionChannel
            from es_actors.runtime.metrics import ClientMetrics

            metrics = ClientMetrics()
            self._channels = [
                PartitionChannel(i, a, config, self._convert, metrics.observe, direct=config.direct_link)
                for i, a in enumerate(actors)
            ]

    # -- opening and closing --------------------------------------------------------------

    @classmethod
    def open(
        cls,
        uri: str | os.PathLike[str],
        aggregates: Sequence[type[Aggregate[Any]]] = (),
        *,
        config: StoreConfig | None = None,
        address: str | None = None,
        read_only: bool = False,
        projections: Sequence[Any] = (),
        interceptors: Sequence[Any] = (),
        **settings: Any,
    ) -> "Store":
        """Open (creating if new) a store. Starts a local Ray unless one is running or ``address`` is given.

        ``read_only=True`` needs no Ray and no lock: it reads what is durable, even while
        another process writes. ``interceptors``: the store's command policies
        (:class:`~es_actors.write.interceptors.CommandInterceptor`), run in order in the partition
        actors for every command after the built-in envelope check; they are code, like
        ``aggregates``, and apply from the open that starts the actors (a Store that joins
        running actors gets theirs).
        """
        config = config or StoreConfig(**settings)
        layout = StoreLayout.from_uri(uri)
        registry = DomainRegistry(aggregates)
        if read_only:
            descriptor = layout.read_descriptor()
            if descriptor is None:
                raise EsActorsError(f"{layout.uri} is not an es_actors store (no store.json)")
            return cls(layout.with_read_models(descriptor.store_id, config.read_model_dir), descriptor, registry,
                       config, None)
        if interceptors:
            from es_actors.write.interceptors import CommandPipeline

            CommandPipeline(config, interceptors)  # a TypeError naming what is not an interceptor, before anything starts
        if projections:
            from es_actors.read.projection import check_projections

            check_projections(projections)  # before anything starts
        descriptor = layout.create_or_check(settings.get("partitions"), config.partitions)
        layout = layout.with_read_models(descriptor.store_id, config.read_model_dir)
        if projections and layout.scheme:
            layout.prepare_read_model_root()  # a bad read_model_dir is named here, not in the projector
        from es_actors.write.actor import start_partition_actors

        actors, created = start_partition_actors(layout, descriptor, aggregates, config, address, interceptors)
        store = cls(layout, descriptor, registry, config, actors)
        store._created = created
        if projections:
            from es_actors.runtime.naming import find_projector
            from es_actors.read.projector_actor import start_projector

            try:
                store.projections.created = find_projector(layout, descriptor) is None
                store.projections.actor = start_projector(layout, descriptor, aggregates, projections, config)
            except BaseException:
                store.close()  # nobody gets this store: release its partitions
                raise
        return store

    def close(self) -> None:
        """Stop using the store: new commands get StoreClosed; queued ones finish first.

        The Store whose open started the partition actors (and projector) seals every tail
        (plain readers then see all events) and stops them. A Store that joined actors some
        other client started only detaches: those actors keep serving the others. To stop
        them from any client, call :meth:`shutdown` (or ``es-actors stop --store PATH``).
        """
        self._close(stop_all=False)

    def shutdown(self) -> None:
        """Seal and stop the store's partition actors and its projector, whoever started them,
        then close this handle. Every client of the store loses them (their commands fail)."""
        if self._actors is None and not self._closed:
            raise EsActorsError(f"{self.layout.root} is open read-only; use `es-actors stop --store PATH` instead")
        self._close(stop_all=True)

    def _close(self, stop_all: bool) -> None:
        if not self._closed:
            _release_reads(self)  # this process's read caches of the store: its runs unmapped
        if self._closed or self._actors is None:
            self._closed = True
            return
        self._closed = True
        from es_actors.runtime.naming import stop_partition_actors, stop_projector

        for channel in self._channels:
            channel.close(self.config.submit_timeout_s)
        import ray

        projector = self.projections.actor if not stop_all else self.projections.running()
        self.projections.actor = None
        mine = [a for a, created in zip(self._actors, self._created) if stop_all or created]
        self._actors = None
        try:  # each may already be stopped (shutdown() or `es-actors stop` from another client)
            if projector is not None and (stop_all or self.projections.created):
                stop_projector(projector)
        except ray.exceptions.RayActorError:
            pass
        try:
            if mine:
                stop_partition_actors(mine)
        except ray.exceptions.RayActorError:
            pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------

    def aggregate(self, aggregate: Any, aggregate_id: str) -> "AggregateHandle[Any]":
        atype = _aggregate_type(aggregate)
        self.registry.aggregate(atype)
        aid = check_text(aggregate_id, "aggregate_id", self.config.max_id_bytes, "max_id_bytes", empty=False)
        return AggregateHandle(self, atype, aid)

    def partition_of(self, aggregate_type: str, aggregate_id: str) -> int:
        return partition_of(aggregate_type, aggregate_id, self.descriptor.partitions)

    def submit_many(self, submissions: Sequence[Submission | tuple[Any, str, Command]], timeout: float | None = None) -> list[CommandResult | EsActorsError]:
        """Each command stands alone and gets its own result or error; order is kept per aggregate.

        Never raises for one bad item (its error is its result); raises StoreClosed after close()."""
        self._check_open()
        futures = self._submit_many(submissions, ResultSlot)
        out: list[CommandResult | EsActorsError] = []
        for fut in futures:
            try:
                out.append(self._wait(fut, timeout))
            except EsActorsError as exc:
                out.append(exc)
            except Exception as exc:  # e.g. a transport failure: still this command's result, not the call's
                err = EsActorsError(f"{type(exc).__name__}: {exc}")
                err.__cause__ = exc
                out.append(err)
        return out

    def submit_many_async(self, submissions: Sequence[Submission | tuple[Any, str, Command]]) -> list["Future[CommandResult]"]:
        """Like :meth:`submit_many`, returning one ``concurrent.futures.Future`` per command at once
        (after close(), each fails with StoreClosed)."""
        return self._submit_many(submissions, Future)

    def _submit_many(self, submissions: Sequence[Submission | tuple[Any, str, Command]], sink: Any) -> list[Any]:
        try:
            submissions = list(submissions)  # a generator or any iterable, once
        except Exception as exc:
            raise InvalidPayload(f"submissions must be an iterable of Submission: {type(exc).__name__}: {exc}") from None
        per_partition: dict[int, list[tuple[int, Any]]] = {}
        futures: list[Any] = [None] * len(submissions)
        for i, s in enumerate(submissions):
            try:
                item = self._submission_item(s)
            except Exception as exc:  # this command alone fails; never the call
                futures[i] = _failed(sink, exc if isinstance(exc, EsActorsError) else InvalidPayload(
                    f"submission {i} is invalid: {type(exc).__name__}: {exc}"))
                continue
            per_partition.setdefault(self.partition_of(item.aggregate_type, item.aggregate_id), []).append((i, item))
        for p, entries in per_partition.items():
            try:
                sinks = self._channel(p).submit([item for _i, item in entries], sink)
            except (Overloaded, StoreClosed) as exc:  # this partition's share only: the others are already on their way
                sinks = [sink() for _ in entries]
                for s in sinks:
                    s.set_exception(exc)
            for (i, _item), fut in zip(entries, sinks):
                futures[i] = fut
        return futures  # type: ignore[return-value]

    def _submission_item(self, s: Any) -> BatchItem:
        if not isinstance(s, Submission):
            if not isinstance(s, (tuple, list)) or not 3 <= len(s) <= 6:
                raise InvalidPayload(f"a submission must be a Submission or (aggregate, aggregate_id, command), not {type(s).__name__}")
            s = Submission(*s)
        if not isinstance(s.audit, Audit):
            raise InvalidPayload(f"audit must be an Audit, not {type(s.audit).__name__}")
        return self._command_item(_aggregate_type(s.aggregate), s.aggregate_id, s.command, s.expected_version,
                                  s.command_id, s.audit)

    def _command_item(
        self, atype: str, aid: str, command: Command, expected: int | None, command_id: str | None, audit: Audit
    ) -> BatchItem:
        """The command as it travels to its partition, every envelope field checked (nothing is sent if one fails)."""
        self.registry.aggregate(atype)
        if not isinstance(command, Command):
            raise InvalidPayload(f"{type(command).__name__} is not a Command")
        try:  # = command.model_dump_json(), at a third of its per-call cost
            payload_json = type(command).__pydantic_serializer__.to_json(command).decode()
        except Exception as exc:  # e.g. a lone surrogate in a str field
            raise InvalidPayload(f"command {type(command).__name__} cannot be sent as JSON: {exc}") from None
        item = CommandEnvelope(
            atype, aid, new_command_id() if command_id is None else command_id, type(command).command_type,
            payload_json, expected, audit.principal, audit.correlation_id, audit.causation_id, audit.reason,
            _metadata_or_none(audit.metadata),
        )
        return validate_envelope(item, self.config)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"this handle on {self.layout.root} was closed; nothing was sent (open the store again)")

    def _channel(self, partition: int) -> Any:
        self._check_open()
        if not self._channels:
            raise EsActorsError(f"{self.layout.root} is open read-only; open it without read_only=True to write")
        return self._channels[partition]

    def _submit_item(self, item: BatchItem, sink: Any = Future) -> Any:
        return self._channel(self.partition_of(item.aggregate_type, item.aggregate_id)).submit([item], sink)[0]

    def _wait(self, fut: "Future[Any]", timeout: float | None, command_id: str | None = None) -> Any:
        try:
            return fut.result(timeout=self.config.submit_timeout_s if timeout is None else timeout)
        except TimeoutError:
            raise CommandTimeout(
                f"no answer in time for command {command_id}; the outcome is unknown: resubmit with "
                f"command_id={command_id!r} to learn it"
            ) from None

    def _convert(self, item: BatchItem, result: ItemResult) -> CommandResult | BaseException:
        if result.error is not None:
            return result.error
        return CommandResult(item.aggregate_type, item.aggregate_id, item.command_id, result.version, result.rows,
                             self.registry, result.duplicate)

    def _import_item(
        self, atype: str, aid: str, events: Sequence[Event], occurred_at: Sequence[datetime | str | None] | None,
        expected_version: int, command_id: str | None, audit: Audit,
    ) -> BatchItem:
        """Already-decided events as they travel to their partition, every envelope field checked."""
        if occurred_at is not None and len(occurred_at) != len(events):
            raise EsActorsError("occurred_at needs one entry per event")
        times = list(occurred_at) if occurred_at is not None else [None] * len(events)
        body = []
        for e, t in zip(events, times):
            if not isinstance(e, Event):
                raise InvalidPayload(f"{type(e).__name__} is not an Event")
            body.append(ImportedEvent(e.event_type, self.registry.stored_payload(e),
                                      t.isoformat() if isinstance(t, datetime) else t))
        return validate_envelope(
            ImportEnvelope(atype, aid, new_command_id() if command_id is None else command_id, body, expected_version,
                           audit.principal, audit.correlation_id, audit.causation_id, audit.reason,
                           _metadata_or_none(audit.metadata)),
            self.config,
        )

    # -- what aggregate handles use (es_actors.store.handles.HandleBackend; not for users) --

    def send_command(
        self, aggregate_type: str, aggregate_id: str, command: Command, expected_version: int | None,
        command_id: str | None, audit: Audit, timeout: float | None,
    ) -> CommandResult:
        """One command, waited for: its result, or its error raised."""
        self._check_open()
        item = self._command_item(aggregate_type, aggregate_id, command, expected_version, command_id, audit)
        return self._wait(self._submit_item(item, ResultSlot), timeout, item.command_id)  # type: ignore[no-any-return]

    def send_command_async(
        self, aggregate_type: str, aggregate_id: str, command: Command, expected_version: int | None,
        command_id: str | None, audit: Audit,
    ) -> "Future[CommandResult]":
        """One command; every error (an invalid field, StoreClosed, a rejection) arrives through the Future."""
        try:
            self._check_open()
            item = self._command_item(aggregate_type, aggregate_id, command, expected_version, command_id, audit)
            return self._submit_item(item)  # type: ignore[no-any-return]
        except EsActorsError as exc:
            return _failed(Future, exc)

    def send_import(
        self, aggregate_type: str, aggregate_id: str, events: Sequence[Event],
        occurred_at: Sequence[datetime | str | None] | None, expected_version: int, command_id: str | None,
        audit: Audit, timeout: float | None,
    ) -> CommandResult:
        """Already-decided events appended through the owning actor, waited for."""
        self._check_open()
        item = self._import_item(aggregate_type, aggregate_id, events, occurred_at, expected_version, command_id, audit)
        return self._wait(self._submit_item(item, ResultSlot), timeout, item.command_id)  # type: ignore[no-any-return]

    def owning_actor(self, aggregate_type: str, aggregate_id: str, read_only_error: str | None = None) -> Any:
        """The partition actor that owns the aggregate (StoreClosed after close; on a read-only
        store, EsActorsError with ``read_only_error`` if given)."""
        self._check_open()
        if self._actors is None and read_only_error is not None:
            raise EsActorsError(read_only_error)
        return self.partition_actors()[self.partition_of(aggregate_type, aggregate_id)]

    def partition_actors(self) -> list[Any]:
        """The partition actors this Store uses; StoreClosed after close, EsActorsError if read-only."""
        self._check_open()
        if self._actors is None:
            raise EsActorsError(f"{self.layout.root} is open read-only; this needs the partition actors")
        return self._actors

    def partition_actors_or_none(self) -> list[Any] | None:
        """The partition actors this Store uses, or None (read-only, or closed)."""
        return self._actors

    def _find_projector(self) -> Any:
        """The store's projector or None (:meth:`Projections.running`)."""
        return self.projections.running()
