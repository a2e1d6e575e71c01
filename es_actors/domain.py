"""The pure domain core: commands, events and deciders. No Ray, no files.

An aggregate is a decider: ``initial_state()``, ``decide(state, command) -> events``
(or raise :class:`~es_actors.errors.DomainError`) and ``evolve(state, event) -> state``.
``evolve`` must return a new state and leave its input untouched: the partition actor
relies on that to discard the effects of a batch whose durable write failed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any, ClassVar, Generic, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .errors import InvalidPayload, UnknownAggregateType, UnknownCommand
from .upcasting import EventDecoder, Upcaster, Where

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
        """Replay events onto a state (the initial one by default)."""
        s = cls.initial_state() if state is None else state
        for e in events:
            s = cls.evolve(s, e)
        return s


class StateCodec:
    """Encodes an aggregate's state for a snapshot: JSON through pydantic when its type allows
    (readable with DuckDB), pickle otherwise."""

    def __init__(self, agg: type[Aggregate[Any]]) -> None:
        self.state_type = type(agg.initial_state())
        try:
            self._adapter: TypeAdapter[Any] | None = TypeAdapter(self.state_type)
            self.schema = json.dumps(self._adapter.json_schema(), sort_keys=True)
            self.encoding = "json"
        except Exception:  # not a type pydantic knows: fall back to pickle and the class name
            self._adapter = None
            self.schema = f"{self.state_type.__module__}.{self.state_type.__qualname__}"
            self.encoding = "pickle"

    def encode(self, state: Any) -> bytes:
        if self._adapter is not None:
            data = self._adapter.dump_json(state)
            # JSON may not give the state back (a plain dict's int keys become strings, tuples in
            # an untyped field lists): such a snapshot would hydrate another state than replay.
            if self._adapter.validate_json(data) != state:
                raise ValueError(f"state {self.state_type.__qualname__} does not survive a JSON round trip")
            return data
        return pickle.dumps(state, protocol=5)

    def decode(self, data: bytes, encoding: str) -> Any:
        if encoding != self.encoding:
            raise ValueError(f"snapshot encoded as {encoding}, this code uses {self.encoding}")
        if self._adapter is not None:
            return self._adapter.validate_json(data)
        return pickle.loads(data)


class DomainRegistry:
    """Resolves stored names to classes: aggregate types, their commands, and event types."""

    def __init__(self, aggregates: Sequence[type[Aggregate[Any]]]) -> None:
        self.aggregates: dict[str, type[Aggregate[Any]]] = {}
        self.commands: dict[str, dict[str, type[Command]]] = {}
        self.events: dict[str, type[Event]] = {}
        self._codecs: dict[str, StateCodec] = {}
        self._fingerprints: dict[str, str] = {}
        self._list_adapters: dict[str, TypeAdapter[Any]] = {}
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
        self.decoder = EventDecoder(self.events, [u for agg in aggregates for u in agg.upcasters])

    def decode(self, event_type: str, schema_version: int, payload_json: str, where: Where = "") -> list[Event]:
        """A stored event as current events (upcast if older); UnreadableEvent names it if it cannot be."""
        return self.decoder.decode(event_type, schema_version, payload_json, where)

    def list_adapter(self, event_type: str) -> TypeAdapter[Any]:
        """Validates a JSON array of one current event type in one call (bulk reads)."""
        adapter = self._list_adapters.get(event_type)
        if adapter is None:
            adapter = self._list_adapters[event_type] = TypeAdapter(list[self.events[event_type]])  # type: ignore[name-defined]
        return adapter

    def state_codec(self, aggregate_type: str) -> StateCodec:
        codec = self._codecs.get(aggregate_type)
        if codec is None:
            codec = self._codecs[aggregate_type] = StateCodec(self.aggregate(aggregate_type))
        return codec

    def snapshot_fingerprint(self, aggregate_type: str) -> str:
        """What a snapshot depends on: state version and schema, event schemas and upcasters in force.

        A snapshot whose fingerprint differs is never used (full replay instead)."""
        fp = self._fingerprints.get(aggregate_type)
        if fp is None:
            agg = self.aggregate(aggregate_type)
            codec = self.state_codec(aggregate_type)
            text = "\n".join(
                [f"aggregate {aggregate_type} state v{agg.state_version}", f"state {codec.encoding} {codec.schema}",
                 f"events {self.decoder.fingerprint()}"]
            )
            fp = self._fingerprints[aggregate_type] = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        return fp

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

    def stored_payload(self, event: Event) -> str:
        """The JSON text an event is stored as (see :meth:`stored_event`)."""
        return self.stored_event(event)[0]

    def stored_event(self, event: Event) -> tuple[str, Event]:
        """The JSON text an event is stored as and the event read back from it, refused unless
        it reads back as the same event.

        A command must never be acknowledged for an event no reader can decode: a float
        ``inf`` that pydantic writes as ``null``, a NaN, a value whose serialiser loses
        information. So the text must be strict JSON (no NaN/Infinity) and validate back
        into the event's class, equal to it. InvalidPayload names the event type and field.
        """
        cls = type(event)
        name = cls.event_type
        # pydantic-core's serializer and validator directly: the same as model_dump_json() and
        # model_validate_json(), at less than half their per-call cost (benchmarks/envelope_cost.py).
        try:
            text = cls.__pydantic_serializer__.to_json(event).decode()
        except Exception as exc:  # e.g. a lone surrogate in a str field, a value pydantic cannot write
            raise InvalidPayload(f"event {name!r} cannot be stored as JSON: {exc}") from None
        if "NaN" in text or "Infinity" in text:  # cheap screen; the parse below decides
            try:
                json.loads(text, parse_constant=_refuse_constant)
            except ValueError as exc:
                raise InvalidPayload(f"event {name!r} cannot be stored: {exc}") from None
        try:
            back = cls.__pydantic_validator__.validate_json(text)
        except ValidationError as exc:
            raise InvalidPayload(f"event {name!r} would not read back from its stored JSON {text[:200]}: {exc}") from None
        if back.__dict__ != event.__dict__ and back != event:  # the dicts first: 0.1 us instead of 0.4
            fields = [f for f in cls.model_fields if getattr(back, f, None) != getattr(event, f, None)]
            detail = ", ".join(f"{f}={getattr(event, f, None)!r} reads back as {getattr(back, f, None)!r}" for f in fields)
            raise InvalidPayload(f"event {name!r} would not read back as decided: {detail or text[:200]}")
        return text, back

    def check_event(self, aggregate_type: str, event: Event) -> None:
        """An event may only be stored if its aggregate declares its class."""
        agg = self.aggregate(aggregate_type)
        if type(event) not in agg.events:
            raise InvalidPayload(
                f"{aggregate_type!r} does not declare event {type(event).__name__!r}; "
                f"declared: {[e.event_type for e in agg.events]}"
            )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"its JSON holds {name}, which strict JSON (and every reader of the log) refuses")
