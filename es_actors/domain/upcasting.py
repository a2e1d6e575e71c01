"""Event schema evolution: upcaster chains from stored (type, version, payload) to current events.

Stored events are never rewritten. Each read path (rehydration, history, time travel,
projections, contract checks) turns a stored event into current event objects here:

- the fast path: the stored type and version are current -> one validated event;
- otherwise the payload is parsed and an upcaster registered for (type, version) turns it
  into the next step: usually the same type at version + 1, but also a renamed type, or
  several events (one stored event read as two; both keep the stored version and position);
- until every piece is a registered current class at its current ``schema_version``.

An unknown type, a version with no upcaster, an upcaster that fails, or a payload that no
longer validates raises :class:`UnreadableEvent` naming the event; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from types import CodeType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

from es_actors.errors import EsActorsError

if TYPE_CHECKING:
    from es_actors.domain import Event

Payload = dict[str, Any]


class UnreadableEvent(EsActorsError):
    """A stored event cannot be read as a current event; the message names it and why."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One step of an upcaster chain: an event as some version of the code wrote it."""

    event_type: str
    schema_version: int
    payload: Payload


UpcastResult = Union[Payload, Sequence[StoredEvent]]
#: Where a stored event lies, for error messages: the text, or a function that makes it.
Where = Union[str, Callable[[], str]]


@dataclass(frozen=True)
class Upcaster:
    """Turns a stored ``event_type`` at ``from_version`` into the next step of its chain.

    ``fn(payload)`` returns either a dict (the same type at ``from_version + 1``) or a list
    of :class:`StoredEvent` (a renamed type, or one stored event read as several).
    """

    event_type: str
    from_version: int
    fn: Callable[[Payload], UpcastResult]
    #: Optional vectorised form for SQL projections: a query over the relation ``stored``
    #: (log rows of this type and version) returning log rows of the next step. The Python
    #: ``fn`` stays the reference; without ``sql`` old rows are upcast row by row.
    sql: str | None = None

    def apply(self, payload: Payload) -> list[StoredEvent]:
        out = self.fn(dict(payload))  # a copy: an upcaster that edits in place cannot leak
        if isinstance(out, Mapping):
            return [StoredEvent(self.event_type, self.from_version + 1, dict(out))]
        steps = list(out)
        if not steps:
            raise ValueError("it returned no events (a stored event is never dropped silently)")
        if not all(isinstance(s, StoredEvent) for s in steps):
            raise TypeError("an upcaster returns a dict or a list of StoredEvent")
        return steps

    def fingerprint(self) -> str:
        """Changes when the upcaster's code changes: snapshots taken under other code are not used."""
        return f"{self.event_type}@{self.from_version}:{code_digest(self.fn)}:{self.sql or ''}"


def upcaster(
    event_type: str, from_version: int, sql: str | None = None
) -> Callable[[Callable[[Payload], UpcastResult]], Upcaster]:
    """Decorator: ``@upcaster("MoneyDeposited", from_version=1)`` over ``def f(payload) -> dict``."""

    def wrap(fn: Callable[[Payload], UpcastResult]) -> Upcaster:
        return Upcaster(event_type, from_version, fn, sql)

    return wrap


def _code_parts(code: CodeType) -> list[Any]:
    parts: list[Any] = [code.co_code.hex(), list(code.co_names), list(code.co_varnames)]
    for c in code.co_consts:
        parts.append(_code_parts(c) if isinstance(c, CodeType) else repr(c))
    return parts


def code_digest(fn: Callable[..., Any]) -> str:
    """A digest of what a function computes with: its compiled code and constants, default
    arguments, closure values, and the simple globals and helper functions it names.
    Same code under the same Python -> same digest; a change to any of those -> another one."""
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its class and repr are the best we know
        return hashlib.blake2b(repr((type(fn).__qualname__, repr(fn))).encode(), digest_size=8).hexdigest()
    parts: list[Any] = [getattr(fn, "__qualname__", ""), _code_parts(code)]
    parts.append(repr(getattr(fn, "__defaults__", None)))
    parts.append(repr(sorted((getattr(fn, "__kwdefaults__", None) or {}).items())))
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            parts.append(repr(cell.cell_contents))
        except ValueError:  # an empty cell
            parts.append("<empty>")
    globals_ = getattr(fn, "__globals__", {})
    for name in sorted(_names(code)):
        value = globals_.get(name)
        if isinstance(value, (int, float, str, bytes, bool, tuple, frozenset)) or value is None and name in globals_:
            parts.append(f"{name}={value!r}")
        elif isinstance(getattr(value, "__code__", None), CodeType):
            parts.append(f"{name}:{_code_parts(value.__code__)}")  # type: ignore[union-attr]
    text = json.dumps(parts, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _names(code: CodeType) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, CodeType):
            out |= _names(c)
    return out


class EventDecoder:
    """Stored event -> current event objects, through the registered upcaster chains."""

    MAX_STEPS = 64  # a chain longer than this is a cycle in the upcasters

    def __init__(self, events: Mapping[str, "type[Event]"], upcasters: Sequence[Upcaster]) -> None:
        self.events = dict(events)
        self.upcasters: dict[tuple[str, int], Upcaster] = {}
        for u in upcasters:
            key = (u.event_type, u.from_version)
            known = self.upcasters.get(key)
            if known is not None and known is not u:
                raise ValueError(f"two upcasters for {u.event_type!r} v{u.from_version}")
            current = self.events.get(u.event_type)
            if current is not None and u.from_version >= current.schema_version:
                raise ValueError(
                    f"upcaster for {u.event_type!r} v{u.from_version} is not older than the current "
                    f"schema_version {current.schema_version}"
                )
            self.upcasters[key] = u

    def is_current(self, event_type: str, schema_version: int) -> bool:
        cls = self.events.get(event_type)
        return cls is not None and cls.schema_version == schema_version

    def decode(self, event_type: str, schema_version: int, payload_json: str, where: Where = "") -> list["Event"]:
        """The current events one stored event reads as (usually one). ``where`` names it in errors
        (text, or a function giving it: hot paths build it only when there is an error)."""
        cls = self.events.get(event_type)
        if cls is not None and cls.schema_version == schema_version:
            try:
                return [cls.model_validate_json(payload_json)]
            except Exception as exc:
                raise self._error(where, event_type, schema_version, f"payload does not validate: {exc}") from None
        try:
            payload = json.loads(payload_json)
        except ValueError as exc:
            raise self._error(where, event_type, schema_version, f"payload is not JSON: {exc}") from None
        return self.decode_steps([StoredEvent(event_type, schema_version, payload)], where)

    def decode_steps(self, pending: list[StoredEvent], where: Where = "") -> list["Event"]:
        out: list[Event] = []
        first = pending[0]
        # Each piece carries the length of the chain that made it: the limit is per chain, so a
        # stored event legitimately split into many pieces is not mistaken for a cycle.
        todo: list[tuple[StoredEvent, int]] = [(se, 0) for se in pending]
        while todo:
            se, steps = todo.pop(0)
            cls = self.events.get(se.event_type)
            if cls is not None and cls.schema_version == se.schema_version:
                try:
                    out.append(cls.model_validate(se.payload))
                except Exception as exc:
                    raise self._error(
                        where, first.event_type, first.schema_version,
                        f"upcast to {se.event_type} v{se.schema_version}, the payload does not validate: {exc}",
                    ) from None
                continue
            up = self.upcasters.get((se.event_type, se.schema_version))
            if up is None:
                raise self._error(where, first.event_type, first.schema_version, self._why_unknown(se))
            if steps + 1 > self.MAX_STEPS:
                raise self._error(where, first.event_type, first.schema_version, "upcaster chain does not end (a cycle?)")
            try:
                todo[0:0] = [(step, steps + 1) for step in up.apply(se.payload)]
            except Exception as exc:
                raise self._error(
                    where, first.event_type, first.schema_version,
                    f"upcaster {se.event_type} v{se.schema_version} failed: {type(exc).__name__}: {exc}",
                ) from None
        return out

    def _why_unknown(self, se: StoredEvent) -> str:
        cls = self.events.get(se.event_type)
        if cls is None:
            return f"no event class and no upcaster for type {se.event_type!r} v{se.schema_version}"
        if se.schema_version > cls.schema_version:
            return (
                f"{se.event_type} v{se.schema_version} is newer than this code's v{cls.schema_version}: written by "
                "newer code (deploy the newer event class), or produced by an upcaster that goes too far"
            )
        return f"no upcaster from {se.event_type} v{se.schema_version} (current is v{cls.schema_version})"

    @staticmethod
    def _error(where: Where, event_type: str, version: int, why: str) -> UnreadableEvent:
        where = where() if callable(where) else where
        at = f" at {where}" if where else ""
        return UnreadableEvent(f"stored event {event_type} v{version}{at}: {why}")

    def fingerprint(self) -> str:
        """Covers every event schema and upcaster in force."""
        parts = sorted(
            [f"event {t} v{c.schema_version} {json.dumps(c.model_json_schema(), sort_keys=True)}" for t, c in self.events.items()]
            + [f"upcaster {u.fingerprint()}" for u in self.upcasters.values()]
        )
        return hashlib.blake2b("\n".join(parts).encode(), digest_size=12).hexdigest()
