"""The application edge: open a store, get aggregate handles, submit commands, read back.

    store = Store.open("./bank-store", aggregates=[BankAccount])
    acct = store.aggregate(BankAccount, "acc-1")
    result = acct.submit(Deposit(amount=100), expected_version=1, principal="alice")
    store.close()  # seals the tail: plain DuckDB then sees every event

Every command is checked per command before it is queued (es_actors/write/envelope.py): a bad one
fails alone, with InvalidPayload naming the field, and the partition actor checks it again.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Mapping, Sequence, TypeVar

from es_actors.write.client import ResultSlot
from es_actors.config import StoreConfig
from es_actors.domain import Aggregate, Command, DomainRegistry, Event
from es_actors.write.envelope import BatchItem, check_text, validate_envelope
from es_actors.errors import CommandTimeout, EsActorsError, InvalidPayload, Overloaded, StoreClosed
from es_actors.codecs.views import CommandResult, RecordedEvent
from es_actors.storage.backends import aggregate_rows
from es_actors.storage.layout import StoreDescriptor, StoreLayout, partition_of
from es_actors.storage.reader import sealed_files

S = TypeVar("S")


def new_command_id() -> str:
    """128 random bits as hex, like uuid4().hex at a fraction of the cost."""
    return os.urandom(16).hex()
AggregateRef = "type[Aggregate[Any]] | str"


@dataclass(frozen=True)
class Audit:
    """Who asked, as part of what, and why: stored on every event the command appends."""

    principal: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_meta(self) -> dict[str, Any] | None:
        """The audit as it travels to the actor; None when there is nothing to say (the common case).

        Values go as given (no truthiness test): the envelope check refuses a wrong type
        instead of it being dropped (a principal of 0 is an error, not "no principal")."""
        md = self.metadata
        empty_md = md is None or (type(md) is dict and not md)
        if (self.principal is None and self.correlation_id is None and self.causation_id is None
                and self.reason is None and empty_md):
            return None
        return {
            "principal": self.principal,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "reason": self.reason,
            "metadata": None if empty_md else md,
        }


@dataclass(frozen=True)
class Submission:
    """One command of a bulk call."""

    aggregate: Any  # aggregate class or its type name
    aggregate_id: str
    command: Command
    expected_version: int | None = None
    command_id: str | None = None
    audit: Audit = Audit()


@dataclass(frozen=True)
class AggregateState(Generic[S]):
    version: int
    state: S


class Store:
    """A handle on one event store: a directory of partition logs and the actors that own them."""

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
        self._projector: Any = None
        self._projector_created = False
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
        **settings: Any,
    ) -> "Store":
        """Open (creating if new) a store. Starts a local Ray unless one is running or ``address`` is given.

        ``read_only=True`` needs no Ray and no lock: it reads what is durable, even while
        another process writes.
        """
        config = config or StoreConfig(**settings)
        layout = StoreLayout.from_uri(uri)
        registry = DomainRegistry(aggregates)
        if read_only:
            descriptor = layout.read_descriptor()
            if descriptor is None:
                raise EsActorsError(f"{layout.root} is not an es_actors store (no store.json)")
            return cls(layout, descriptor, registry, config, None)
        if projections:
            layout.require_local("projections")
            from es_actors.read.projection import check_projections

            check_projections(projections)  # before anything starts
        descriptor = layout.create_or_check(settings.get("partitions"), config.partitions)
        from es_actors.write.actor import start_partition_actors

        actors, created = start_partition_actors(layout, descriptor, aggregates, config, address)
        store = cls(layout, descriptor, registry, config, actors)
        store._created = created
        if projections:
            from es_actors.runtime.naming import find_projector
            from es_actors.read.projector import start_projector

            try:
                store._projector_created = find_projector(layout, descriptor) is None
                store._projector = start_projector(layout, descriptor, aggregates, projections, config)
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
        if self._closed or self._actors is None:
            self._closed = True
            return
        self._closed = True
        from es_actors.runtime.naming import stop_partition_actors, stop_projector

        for channel in self._channels:
            channel.close(self.config.submit_timeout_s)
        import ray

        projector = self._projector if not stop_all else self._find_projector()
        self._projector = None
        mine = [a for a, created in zip(self._actors, self._created) if stop_all or created]
        self._actors = None
        try:  # each may already be stopped (shutdown() or `es-actors stop` from another client)
            if projector is not None and (stop_all or self._projector_created):
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
            per_partition.setdefault(self.partition_of(item[1], item[2]), []).append((i, item))
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
        body = (type(command).command_type, payload_json)
        item = ("command", atype, aid, new_command_id() if command_id is None else command_id, expected, body,
                audit.as_meta())
        return validate_envelope(item, self.config)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"this handle on {self.layout.root} was closed; nothing was sent (open the store again)")

    def _channel(self, partition: int) -> Any:
        self._check_open()
        if not self._channels:
            raise EsActorsError(f"{self.layout.root} is open read-only; open it without read_only=True to write")
        return self._channels[partition]

    def _submit_item(self, item: tuple[Any, ...], sink: Any = Future) -> Any:
        return self._channel(self.partition_of(item[1], item[2])).submit([item], sink)[0]

    def _wait(self, fut: "Future[Any]", timeout: float | None, command_id: str | None = None) -> Any:
        try:
            return fut.result(timeout=self.config.submit_timeout_s if timeout is None else timeout)
        except TimeoutError:
            raise CommandTimeout(
                f"no answer in time for command {command_id}; the outcome is unknown: resubmit with "
                f"command_id={command_id!r} to learn it"
            ) from None

    def _convert(self, item: tuple[Any, ...], result: tuple[Any, ...]) -> CommandResult | BaseException:
        if result[0] == "err":
            return result[1]
        return CommandResult(item[1], item[2], item[3], result[1], result[2], self.registry, result[0] == "dup")

    # -- reading --------------------------------------------------------------------------

    def history(self, aggregate_type: str, aggregate_id: str) -> list[RecordedEvent]:
        """Every durable event of one aggregate, oldest first, with its audit columns."""
        return [e for r in self.history_rows(aggregate_type, aggregate_id) for e in RecordedEvent.from_row(r, self.registry)]

    def history_rows(self, aggregate_type: str, aggregate_id: str) -> list[tuple[Any, ...]]:
        """Raw stored rows (no domain classes needed): what the CLI prints."""
        aggregate_type = check_text(aggregate_type, "aggregate type", self.config.max_id_bytes, "max_id_bytes")
        aggregate_id = check_text(aggregate_id, "aggregate id", self.config.max_id_bytes, "max_id_bytes")
        p = self.partition_of(aggregate_type, aggregate_id)
        rows = aggregate_rows(self.layout, p, aggregate_type, aggregate_id)
        return sorted(rows, key=lambda r: r[4])

    def stats(self) -> list[dict[str, Any]]:
        """Per-partition counters from the owning actors."""
        from es_actors.runtime.cluster import actor_get

        if self._actors is None:
            raise EsActorsError("stats need an open (writable) store")
        return actor_get([a.stats.remote() for a in self._actors])

    def seal(self) -> None:
        """Seal every partition's tail now (close does this too)."""
        from es_actors.runtime.cluster import actor_get

        if self._actors is not None:
            actor_get([a.seal.remote() for a in self._actors])

    def passivate(self) -> int:
        """Drop every hydrated state from the partition actors' memory; they rehydrate on next use."""
        from es_actors.runtime.cluster import actor_get

        return sum(actor_get([a.passivate.remote() for a in self._writable_actors()]))

    def hydrate(self, limit_per_partition: int | None = None) -> int:
        """Warm up: hydrate the most recently written aggregates of each partition (default up to
        ``max_hydrated``), from snapshots plus later events. Returns how many were hydrated."""
        from es_actors.runtime.cluster import actor_get

        return sum(actor_get([a.hydrate_all.remote(limit_per_partition) for a in self._writable_actors()]))

    def flush_snapshots(self) -> int:
        """Write the snapshots the live policy has due now instead of at the next batch or close."""
        from es_actors.runtime.cluster import actor_get

        return sum(actor_get([a.flush_snapshots.remote() for a in self._writable_actors()]))

    def _writable_actors(self) -> list[Any]:
        self._check_open()
        if self._actors is None:
            raise EsActorsError(f"{self.layout.root} is open read-only; this needs the partition actors")
        return self._actors

    # -- the read side ----------------------------------------------------------------------

    def query(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        output: str = "arrow",
    ) -> Any:
        """Read-only DuckDB SQL over the read models and ``events`` (every durable event).

        ``params`` are bound, never spliced: a list for ``?`` / ``$1`` placeholders, a dict for
        ``$name``. ``timeout`` is seconds > 0, ``None`` for ``query_timeout_s``. The result is
        capped at ``query_max_rows`` / ``query_max_bytes`` (QueryTooLarge). A query that could
        write, run other SQL or touch files or settings is refused before it runs (QueryRefused,
        ADR-010). Returns an Arrow table (``output="pandas"`` or ``"polars"`` converts). Runs
        in the projector when one runs; otherwise in this process (read models included if no
        projector holds their file).
        """
        from es_actors.read.queries import query_request

        req = query_request(sql, params, timeout, self.config)  # refused here, before any call
        projector = self._find_projector()
        if projector is not None:
            table = self._query_projector(projector, req)
        else:
            table = self._query_here(req)
        return _convert_table(table, output)

    #: How long past a query's timeout the caller waits for the projector's answer (queueing
    #: behind other calls, moving the result) before it gives up.
    QUERY_ANSWER_GRACE_S = 10.0

    def _query_projector(self, projector: Any, req: Any) -> Any:
        import ray

        from es_actors.errors import QueryTimeout

        wait_s = req.timeout_s + self.QUERY_ANSWER_GRACE_S
        try:
            return self._ray_call_projector(projector, "query", req.sql, req.timeout_s, req.params, wait_s=wait_s)
        except ray.exceptions.GetTimeoutError:
            raise QueryTimeout(
                f"no answer from the projector within {wait_s:.1f} s (query timeout {req.timeout_s} s)"
            ) from None

    def _query_here(self, req: Any) -> Any:
        import duckdb

        from es_actors.errors import QueryFailed
        from es_actors.read.queries import run_query
        from es_actors.read.readmodel import connect_restricted, readmodel_path
        from es_actors.storage.reader import log_snapshot

        path = readmodel_path(self.layout.root)
        con, held = None, False
        if path.exists():
            try:
                con = connect_restricted(str(path), self.layout.root, read_only=True)
            except duckdb.Error:  # held by a projector this process cannot reach: events only
                con, held = None, True
        con = con or connect_restricted(":memory:", self.layout.root)
        try:
            files, tail = log_snapshot(self.layout, self.descriptor.partitions)
            return run_query(con.cursor(), req, files, tail)
        except QueryFailed as exc:
            if held:
                raise type(exc)(
                    f"{exc} (only `events` is readable here: the read models are held by a running projector; "
                    "join its Ray cluster, e.g. --address or RAY_ADDRESS)"
                ) from None
            raise
        finally:
            con.close()

    def _find_projector(self) -> Any:
        if self._projector is not None:
            return self._projector
        import ray

        if not ray.is_initialized():
            return None
        from es_actors.runtime.naming import find_projector

        return find_projector(self.layout, self.descriptor)

    def _projector_or_raise(self) -> Any:
        projector = self._find_projector()
        if projector is None:
            raise EsActorsError("no projector runs for this store: open it with projections=[...]")
        return projector

    def _call_projector(self, method: str, *args: Any) -> Any:
        return self._ray_call_projector(self._projector_or_raise(), method, *args)

    def _ray_call_projector(self, projector: Any, method: str, *args: Any, wait_s: float | None = None) -> Any:
        """Call the projector, waiting out its restart after a crash (every read-side call is
        safe to repeat) for up to ``retry_deadline_s``; each answer for up to ``wait_s`` (then
        the call is cancelled and GetTimeoutError raised)."""
        import time

        import ray

        from es_actors.runtime.cluster import actor_get

        deadline = time.monotonic() + self.config.retry_deadline_s
        while True:
            ref = getattr(projector, method).remote(*args)
            try:
                return actor_get(ref, timeout=wait_s)
            except ray.exceptions.GetTimeoutError:
                try:
                    ray.cancel(ref)  # if still queued; a running query ends at its own deadline
                except Exception:
                    pass
                raise
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def wait_for(
        self, projection: str, result: "CommandResult | dict[int, int] | None", timeout: float = 10.0
    ) -> None:
        """Read-your-writes: return once ``projection`` has applied the command's events (or
        the given {partition: position}; or, for None, everything acknowledged so far);
        ProjectionTimeout after ``timeout`` seconds."""
        if result is None:
            positions = {s["partition"]: s["next_position"] - 1 for s in self.stats() if s["next_position"] > 1}
        elif isinstance(result, CommandResult):
            positions: dict[int, int] = {}
            for p, pos in result.positions:
                positions[p] = max(pos, positions.get(p, 0))
        else:
            positions = dict(result)
        if positions:
            self._call_projector("wait_for", projection, positions, timeout)

    def pause(self, projection: str) -> None:
        """Stop applying events to a projection; its checkpoint (and read model) stay as they are."""
        self._call_projector("pause", projection)

    def resume(self, projection: str) -> None:
        """Resume a paused projection, or retry a halted one from its checkpoint."""
        self._call_projector("resume", projection)

    def projection_status(self) -> list[dict[str, Any]]:
        """Per projection and partition: checkpoint, head, lag (events, seconds), status, last error, events/s."""
        return self._call_projector("status")

    def dead_letters(self, projection: str | None = None) -> Any:
        """Events parked by projections with ``on_error="park"`` (Arrow table)."""
        return self._call_projector("dead_letters", projection)

    def retry_dead_letters(self, projection: str) -> dict[str, int]:
        """Apply parked events again (after a fix); those that succeed leave the dead letters."""
        return self._call_projector("retry_dead_letters", projection)

    def subscribe(
        self,
        checkpoint: dict[int, int] | None = None,
        *,
        order: str = "partition",
        follow: bool = True,
        event_types: Sequence[str] | None = None,
        poll_s: float = 0.05,
        merge_grace_s: float = 0.5,
    ) -> "Any":
        """A catch-up subscription for integrations outside DuckDB; see :class:`~es_actors.subscription.Subscription`."""
        from es_actors.read.subscription import Subscription

        return Subscription(
            self.layout, self.descriptor.partitions, self.registry, checkpoint or {}, order=order, follow=follow,
            event_types=event_types, poll_s=poll_s, merge_grace_s=merge_grace_s,
        )

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def sealed_glob(self) -> str:
        """Give this to DuckDB's ``read_parquet``: each sealed event once, never a partial file."""
        return self.layout.sealed_glob

    def sealed_files(self) -> list[Path]:
        """The exact sealed file set now: a snapshot that stays readable for ``gc_grace_s``."""
        return sealed_files(self.layout, self.descriptor.partitions)


class AggregateHandle(Generic[S]):
    """A client handle for one aggregate: submit commands, read its state and history."""

    def __init__(self, store: Store, aggregate_type: str, aggregate_id: str) -> None:
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
        self.store._check_open()
        audit = Audit(principal, correlation_id, causation_id, reason, {} if metadata is None else metadata)
        item = self.store._command_item(
            self.aggregate_type, self.aggregate_id, command, expected_version, command_id, audit
        )
        return self.store._wait(self.store._submit_item(item, ResultSlot), timeout, item[3])

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
        try:
            self.store._check_open()
            audit = Audit(principal, correlation_id, causation_id, reason, {} if metadata is None else metadata)
            item = self.store._command_item(
                self.aggregate_type, self.aggregate_id, command, expected_version, command_id, audit
            )
            return self.store._submit_item(item)
        except EsActorsError as exc:
            return _failed(Future, exc)

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
        self.store._check_open()
        if occurred_at is not None and len(occurred_at) != len(events):
            raise EsActorsError("occurred_at needs one entry per event")
        times = list(occurred_at) if occurred_at is not None else [None] * len(events)
        body = []
        for e, t in zip(events, times):
            if not isinstance(e, Event):
                raise InvalidPayload(f"{type(e).__name__} is not an Event")
            body.append((e.event_type, self.store.registry.stored_payload(e), t.isoformat() if isinstance(t, datetime) else t))
        audit = Audit(principal, correlation_id, causation_id, reason, {} if metadata is None else metadata)
        item = validate_envelope(
            ("import", self.aggregate_type, self.aggregate_id, new_command_id() if command_id is None else command_id,
             expected_version, body, audit.as_meta()),
            self.store.config,
        )
        return self.store._wait(self.store._submit_item(item, ResultSlot), timeout, item[3])

    def state(self) -> AggregateState[S]:
        """Current version and state, from the owning actor (consistent with acknowledged commands)."""
        from es_actors.runtime.cluster import actor_get

        self.store._check_open()
        if self.store._actors is None:
            raise EsActorsError("state needs an open (writable) store; read-only stores offer history")
        p = self.store.partition_of(self.aggregate_type, self.aggregate_id)
        version, state = actor_get(self.store._actors[p].get_state.remote(self.aggregate_type, self.aggregate_id))
        return AggregateState(version, state)

    def history(self) -> list[RecordedEvent]:
        return self.store.history(self.aggregate_type, self.aggregate_id)

    def passivate(self) -> bool:
        """Drop this aggregate's state from its actor's memory (it rehydrates on next use)."""
        from es_actors.runtime.cluster import actor_get

        p = self.store.partition_of(self.aggregate_type, self.aggregate_id)
        actor = self.store._writable_actors()[p]
        return bool(actor_get(actor.passivate.remote(self.aggregate_type, self.aggregate_id)))

    def state_at(self, *, version: int | None = None, as_of: datetime | None = None) -> AggregateState[S]:
        """The aggregate as it was at ``version``, or as the store knew it at ``as_of`` (UTC-aware).

        Folds the durable history (no actor involved, so it also works on a read-only store).
        """
        if (version is None) == (as_of is None):
            raise EsActorsError("give exactly one of version= or as_of=")
        if as_of is not None and as_of.tzinfo is None:
            raise EsActorsError("as_of must be timezone-aware (recorded_at is UTC)")
        agg = self.store.registry.aggregate(self.aggregate_type)
        state, at = agg.initial_state(), 0
        for e in self.history():
            if (version is not None and e.version > version) or (as_of is not None and e.recorded_at > as_of):
                break
            state, at = agg.evolve(state, e.event), e.version
        if version is not None and at < version:
            raise EsActorsError(f"{self.aggregate_type}/{self.aggregate_id} has no version {version}; its last is {at}")
        return AggregateState(at, state)


def _aggregate_type(aggregate: Any) -> str:
    """The type name of an aggregate given as its class or its name."""
    if isinstance(aggregate, str):
        return aggregate
    if isinstance(aggregate, type) and issubclass(aggregate, Aggregate):
        return aggregate.aggregate_type
    raise InvalidPayload(f"aggregate must be an Aggregate class or its type name, not {type(aggregate).__name__}")


def _failed(sink: Any, exc: BaseException) -> Any:
    """A result slot or Future that already holds ``exc``."""
    f = sink()
    f.set_exception(exc)
    return f


def _convert_table(table: Any, output: str) -> Any:
    if output == "arrow":
        return table
    if output == "pandas":
        try:
            import pandas  # noqa: F401 - pyarrow's to_pandas needs it, and says so less clearly
        except ImportError:
            raise EsActorsError("output='pandas' needs the pandas package installed") from None
        return table.to_pandas()
    if output == "polars":
        try:
            import polars as pl
        except ImportError:
            raise EsActorsError("output='polars' needs the polars package installed") from None
        return pl.from_arrow(table)
    raise EsActorsError(f"output must be 'arrow', 'pandas' or 'polars', not {output!r}")
