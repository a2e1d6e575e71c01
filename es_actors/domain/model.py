"""The pure domain core: commands, events and deciders. No Ray, no files.

An aggregate is a decider: ``initial_state()``, ``decide(state, command) -> events``
(or raise :class:`~es_actors.errors.DomainError`) and ``evolve(state, event) -> state``.
``evolve`` must return a new state and leave its input untouched: the partition actor
relies on that to discard the effects of a batch whose durable write failed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict

from es_actors.domain.upcasting import Upcaster

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
    #: Upcasters for older stored versions (or older names) of this aggregate's events.
    upcasters: ClassVar[Sequence[Upcaster]] = ()
    #: Bump when ``evolve`` changes meaning: snapshots taken under another state version are not used.
    state_version: ClassVar[int] = 1
    #: Take a snapshot each time an aggregate has this many events past its last one (None: never live).
    snapshot_every: ClassVar[int | None] = None

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
        """Replay events onto a state (the initial one by default): :func:`es_actors.domain.fold`."""
        from es_actors.domain.fold import fold

        return fold(cls, events) if state is None else fold(cls, events, state)  # type: ignore[no-any-return]
