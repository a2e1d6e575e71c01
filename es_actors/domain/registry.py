"""The registry of a store's aggregates: stored names resolved to classes, and the one check
that every stored event reads back as decided. Pure: no Ray, no files."""

from __future__ import annotations

import json
from typing import Any, Sequence

from pydantic import TypeAdapter, ValidationError

from es_actors.domain.model import Aggregate, Command, Event
from es_actors.domain.upcasting import EventDecoder, Where
from es_actors.errors import InvalidPayload, UnknownAggregateType, UnknownCommand


class DomainRegistry:
    """Resolves stored names to classes: aggregate types, their commands, and event types."""

    def __init__(self, aggregates: Sequence[type[Aggregate[Any]]]) -> None:
        self.aggregates: dict[str, type[Aggregate[Any]]] = {}
        self.commands: dict[str, dict[str, type[Command]]] = {}
        self.events: dict[str, type[Event]] = {}
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
