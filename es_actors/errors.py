"""Errors a client can receive, each saying what happened.

Rejections (:class:`CommandRejected`), :class:`Overloaded` and :class:`StorageError` mean nothing
was written; :class:`CommandTimeout` means the outcome is unknown (resubmit by command id).

Errors cross the Ray boundary by pickling, so each keeps its constructor arguments in
``args`` (the default ``BaseException.__reduce__`` then rebuilds it faithfully).
"""

from __future__ import annotations


class EsActorsError(Exception):
    """Base of every error es_actors raises on purpose."""


class CommandRejected(EsActorsError):
    """A command was refused before anything was written; the actor carries on."""


class DomainError(CommandRejected):
    """Raised by an aggregate's ``decide`` when a command breaks a business rule."""


class ConcurrencyError(CommandRejected):
    """The command's ``expected_version`` is not the aggregate's current version."""

    def __init__(self, aggregate: str, expected: int, actual: int) -> None:
        super().__init__(aggregate, expected, actual)
        self.aggregate, self.expected, self.actual = aggregate, expected, actual

    def __str__(self) -> str:
        return (
            f"{self.aggregate}: expected version {self.expected}, but the current version is "
            f"{self.actual}; nothing was written"
        )


class UnknownAggregateType(CommandRejected):
    """No aggregate class is registered under this type name."""


class UnknownCommand(CommandRejected):
    """The aggregate type does not declare this command type."""


class UserCodeError(CommandRejected):
    """The aggregate's own decide or evolve raised an unexpected exception (a bug, not a rule)."""


class InvalidPayload(CommandRejected):
    """A command failed validation: its payload, an envelope field (ids, audit fields, metadata,
    expected version), or an event it decided that could not be stored and read back."""


class PayloadTooLarge(InvalidPayload):
    """A command's payload, events, metadata, id or audit field exceeds its size limit (UTF-8 bytes)."""


class CommandRefused(CommandRejected):
    """A policy of the store's command pipeline (an interceptor given to ``Store.open``) refused
    the command; the message names the interceptor and the command. Nothing was written.
    Interceptors raise it (with their reason) to refuse a command."""


class InterceptorFailed(UserCodeError):
    """An interceptor raised something other than :class:`CommandRefused` (a bug in a policy):
    this command fails, naming the interceptor; the others of its batch go on."""


class CommandIdReused(CommandRejected):
    """A command id was reused for a different command on the same aggregate."""


class StoreClosed(EsActorsError):
    """This Store handle was closed (or shut down): nothing was sent. Open the store again to write."""


class Overloaded(EsActorsError):
    """The partition could not accept the command in time; retry later (nothing was written)."""


class StorageError(EsActorsError):
    """The durable write failed (e.g. disk full); the batch was not acknowledged and the log is intact."""


class WriterFenced(EsActorsError):
    """Another process already owns this partition's log; only one writer is allowed."""


class StoreCorrupted(EsActorsError):
    """The log is damaged or breaks an invariant (a gap, an overlap): nothing was changed;
    the message names the file, the byte offset and the positions, and how to repair."""


class StoreFormatOutdated(EsActorsError):
    """The store was written by an older format: readable, but writable only after an explicit upgrade."""


class PartitionDamaged(CommandRejected):
    """The aggregate's partition lost positions (recorded by a repair) that an operator has not yet
    accepted, or this aggregate is known to have lost events: commands are refused, reads work."""


class CommandTimeout(EsActorsError, TimeoutError):
    """No answer in time. The outcome is unknown: resubmit with the same command id to learn it."""


class ProjectionHalted(EsActorsError):
    """The projection stopped on an error (its status shows it); resume it after a fix."""


class ProjectionTimeout(EsActorsError):
    """The projection did not reach the asked positions in time."""


class ProjectionStalled(EsActorsError):
    """A call needed the projection's cursor, and a batch of it stayed in its handler past the
    bound (the message names the projection and since when); nothing was done."""


class QueryRefused(EsActorsError):
    """A query was refused before it ran: it is not one read-only SELECT, calls a function
    that is not allowed (runs SQL, touches files, settings or state), reads a file by path,
    or its arguments (timeout, params) are invalid. Nothing ran (ADR-010)."""


class QueryFailed(EsActorsError):
    """A query failed (syntax, missing table, timeout); the message is DuckDB's."""


class QueryTimeout(QueryFailed, TimeoutError):
    """A query ran past its timeout and was cancelled."""


class QueryTooLarge(QueryFailed):
    """A query's result passed the configured cap (``query_max_rows`` / ``query_max_bytes``)."""


class LinkRefused(EsActorsError, ConnectionError):
    """The direct local link to a partition actor refused or failed the handshake (the client
    falls back to reconnecting with a fresh endpoint, like after an actor restart)."""


class ActorStartFailed(EsActorsError):
    """A store's partition actor or projector did not start: its constructor raised (the message
    holds its error), or it did not come back in time after the store was closed a moment ago."""


class ProjectorConflict(EsActorsError):
    """A projector already runs for this store with other projections than this open asks for."""


class CutoverRefused(EsActorsError):
    """A cutover or rollback found what would make the other version wrong to serve (it differs
    from the current one unexpectedly, is behind the log or halted); force it if that is expected."""


def invalid_file(exc: Exception) -> str:
    """What is wrong with a file's content, on one line: a pydantic validation error as
    ``field: message; ...`` (no URL, no echo of the input), any other error as its text."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            parts = [": ".join(x for x in (".".join(map(str, e.get("loc", ()))), str(e.get("msg", ""))) if x) for e in errors()]
        except Exception:  # noqa: BLE001 - fall back to the text
            parts = []
        if parts:
            more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
            return "; ".join(parts[:3]) + more
    return " ".join(str(exc).split())
