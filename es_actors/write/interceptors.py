"""The command pipeline: the ordered steps every command passes inside its partition actor
before ``decide``, duplicates included.

Step 1 is built in and cannot be turned off: :func:`~es_actors.write.envelope.validate_envelope`
(every envelope field checked). The steps after it are the store's interceptors, in the order
given to ``Store.open(..., interceptors=[...])``: policies such as authorization or rate limits
get one place that clients cannot bypass, since it runs in the actor that owns the aggregate
(Ray calls and the direct link both end in ``Partition.handle_batch``).

An interceptor sees a copy of the checked envelope (changing it changes nothing: what was
checked is what is decided and stored) and a context: the partition, the aggregate's current
version, and, for a retry of a command id this aggregate already accepted, who sent the first
one (:class:`PriorCommand`, looked up only if the interceptor asks). Interceptors run before
the aggregate is hydrated or its dedup record read, so a refused command costs no log reads,
and each command passes them once (also when a batch is re-run one command at a time). So a policy can refuse to hand one principal the result of another's
command by reusing its id. To refuse, it raises :class:`~es_actors.errors.CommandRefused`; the
command then fails with a ``CommandRefused`` naming the interceptor and the command. Anything
else it raises fails that command alone, as :class:`~es_actors.errors.InterceptorFailed`.
Interceptors run on the actor's one thread, must be picklable (they travel to the actor), and
should be quick: they run for every command.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from es_actors.config import StoreConfig
from es_actors.errors import CommandRefused, InterceptorFailed
from es_actors.write.envelope import validate_envelope
from es_actors.write.protocol import CommandEnvelope, Envelope, command_fields


@dataclass(frozen=True, slots=True)
class PriorCommand:
    """An accepted command whose id the current one reuses (the current one is its retry)."""

    principal: str | None
    version: int  # the aggregate's version after it


class InterceptContext:
    """What an interceptor may know besides the envelope: the partition, the aggregate's current
    version (0: no events yet), and ``duplicate_of``, set when this command id was already
    accepted on this aggregate (looked up on first access: it may read the dedup window)."""

    __slots__ = ("partition", "version", "_find_prior", "_prior", "_looked")

    def __init__(
        self, partition: int, version: int, duplicate_of: PriorCommand | None = None,
        find_prior: Callable[[], PriorCommand | None] | None = None,
    ) -> None:
        self.partition = partition
        self.version = version
        self._find_prior = find_prior
        self._prior = duplicate_of
        self._looked = find_prior is None

    @property
    def duplicate_of(self) -> PriorCommand | None:
        if not self._looked:
            self._prior, self._looked = self._find_prior() if self._find_prior else None, True
        return self._prior

    def __repr__(self) -> str:
        return f"InterceptContext(partition={self.partition}, version={self.version})"


@runtime_checkable
class CommandInterceptor(Protocol):
    """A step of the command pipeline. Return to let the command go on; raise
    :class:`~es_actors.errors.CommandRefused` to refuse it (nothing is written)."""

    def intercept(self, envelope: Envelope, context: InterceptContext) -> None: ...


def interceptor_name(interceptor: Any) -> str:
    """An interceptor's ``name`` attribute if it has one, else its class name."""
    name = getattr(interceptor, "name", None)
    return name if isinstance(name, str) and name else type(interceptor).__name__


def describe(envelope: Envelope) -> str:
    """The command as errors name it: its id, type and aggregate."""
    what = envelope.command_type if type(envelope) is CommandEnvelope else "import"
    return f"command {envelope.command_id!r} ({what} on {envelope.aggregate_type}/{envelope.aggregate_id})"


class CommandPipeline:
    """The steps of one partition's command pipeline: the built-in envelope check, then the interceptors."""

    BUILT_IN = ("validate_envelope",)

    def __init__(self, config: StoreConfig, interceptors: Sequence[CommandInterceptor] = ()) -> None:
        for i in interceptors:
            if not callable(getattr(i, "intercept", None)):
                raise TypeError(f"{type(i).__name__} is not a CommandInterceptor: it has no intercept(envelope, context)")
        self.config = config
        self.interceptors = tuple(interceptors)
        self._named = [(interceptor_name(i), i.intercept) for i in self.interceptors]
        #: Step 1: the envelope, every field checked (InvalidPayload naming the field if not).
        #: A partial, not a method: it runs for every command (one call less).
        self.admit: Callable[[Any], Envelope] = partial(validate_envelope, config=config)

    @property
    def steps(self) -> list[str]:
        """The names of the steps, in the order they run."""
        return [*self.BUILT_IN, *(name for name, _ in self._named)]

    def intercept(self, envelope: Envelope, context: InterceptContext) -> None:
        """The interceptors, in order, each on its own copy of the envelope (nothing they do to it
        reaches the command); the first refusal (or failure) ends the command."""
        for name, intercept in self._named:
            try:
                intercept(_shown(envelope), context)
            except CommandRefused as exc:
                raise CommandRefused(f"{name} refused {describe(envelope)}: {_text(exc)}") from None
            except BaseException as exc:  # a bug in a policy fails its command only, like one in decide
                raise InterceptorFailed(
                    f"interceptor {name} failed on {describe(envelope)}: {type(exc).__name__}: {_text(exc)}"
                ) from None


def _shown(envelope: Envelope) -> Envelope:
    """A copy of the envelope that shares nothing mutable with it (built field by field for a
    command: ~1 us where ``copy.deepcopy`` takes ~4)."""
    if type(envelope) is CommandEnvelope:
        shown = CommandEnvelope(*command_fields(envelope))
        if shown.metadata is not None:
            shown.metadata = copy.deepcopy(shown.metadata)
        return shown
    return copy.deepcopy(envelope)  # imports: rare


def _text(exc: BaseException) -> str:
    try:
        return str(exc)[:1000]
    except BaseException:
        return f"<{type(exc).__name__} without a readable message>"


__all__ = ["CommandInterceptor", "CommandPipeline", "InterceptContext", "PriorCommand", "interceptor_name"]
