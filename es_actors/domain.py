"""The pure domain core: commands, events and deciders. No Ray, no files.

An aggregate is a decider: ``initial_state()``, ``decide(state, command) -> events``
(or raise :class:`~es_actors.errors.DomainError`) and ``evolve(state, event) -> state``.
``evolve`` must return a new state and leave its input untouched: the partition actor
relies on that to discard the effects of a batch whose durable write failed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InvalidPayload, UnknownAggregateType, UnknownCommand

State = TypeVar("State")


class Event(BaseModel):
    """A fact that happened. ``event_type`` is its stable stored name (defaults to the class name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__


class Command(BaseModel):
    """An intention addressed to one aggregate. ``command_type`` defaults to the class name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    command_type: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "command_type" not in cls.__dict__:
            cls.command_type = cls.__name__


class Aggregate(Generic[State]):
    """Declare an aggregate by subclassing and filling in the decider's three parts."""

    aggregate_type: ClassVar[str]
    commands: ClassVar[Sequence[type[Command]]] = ()
    events: ClassVar[Sequence[type[Event]]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "aggregate_type" not in cls.__dict__:
            cls.aggregate_type = cls.__name__

    @classmethod
    def initial_state(cls) -> State:
        raise NotImplementedError

    @classmethod
    def decide(cls, state: State, command: Command) -> Sequence[Event]:
        raise NotImplementedError

    @classmethod
    def evolve(cls, state: State, event: Event) -> State:
        raise NotImplementedError

    @classmethod
    def fold(cls, events: Sequence[Event], state: State | None = None) -> State:
        """Replay events onto a state (the initial one by default)."""
        s = cls.initial_state() if state is None else state
        for e in events:
            s = cls.evolve(s, e)
        return s


class DomainRegistry:
    """Resolves stored names to classes: aggregate types, their commands, and event types."""

    def __init__(self, aggregates: Sequence[type[Aggregate[Any]]]) -> None:
        self.aggregates: dict[str, type[Aggregate[Any]]] = {}
        self.commands: dict[str, dict[str, type[Command]]] = {}
        self.events: dict[str, type[Event]] = {}
        for agg in aggregates:
            if agg.aggregate_type in self.aggregates and self.aggregates[agg.aggregate_type] is not agg:
                raise ValueError(f"two aggregate classes share the type name {agg.aggregate_type!r}")
            self.aggregates[agg.aggregate_type] = agg
            self.commands[agg.aggregate_type] = {c.command_type: c for c in agg.commands}
            for ev in agg.events:
                known = self.events.get(ev.event_type)
                if known is not None and known is not ev:
                    raise ValueError(f"two event classes share the stored name {ev.event_type!r}")
                self.events[ev.event_type] = ev

    def aggregate(self, aggregate_type: str) -> type[Aggregate[Any]]:
        try:
            return self.aggregates[aggregate_type]
        except KeyError:
            raise UnknownAggregateType(
                f"unknown aggregate type {aggregate_type!r}; registered: {sorted(self.aggregates)}"
            ) from None

    def command(self, aggregate_type: str, command_type: str, payload: str | dict[str, Any]) -> Command:
        """Validate a command payload (JSON text or a dict) into its class; unknown or invalid is a clear error."""
        self.aggregate(aggregate_type)
        cls = self.commands[aggregate_type].get(command_type)
        if cls is None:
            raise UnknownCommand(
                f"aggregate type {aggregate_type!r} has no command {command_type!r}; "
                f"it accepts: {sorted(self.commands[aggregate_type])}"
            )
        try:
            return cls.model_validate_json(payload) if isinstance(payload, str) else cls.model_validate(payload)
        except ValidationError as exc:
            raise InvalidPayload(f"command {command_type!r} payload is invalid: {exc}") from None

    def event_class(self, event_type: str) -> type[Event]:
        try:
            return self.events[event_type]
        except KeyError:
            raise InvalidPayload(f"unknown event type {event_type!r}; registered: {sorted(self.events)}") from None

    def check_event(self, aggregate_type: str, event: Event) -> None:
        """An event may only be stored if its aggregate declares its class."""
        agg = self.aggregate(aggregate_type)
        if type(event) not in agg.events:
            raise InvalidPayload(
                f"{aggregate_type!r} does not declare event {type(event).__name__!r}; "
                f"declared: {[e.event_type for e in agg.events]}"
            )
