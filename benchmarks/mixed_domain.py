"""The ``mixed_8w8r`` bench's aggregate: a stream that appends one 256-byte event per command.

In an importable module (not ``__main__``) so Ray workers and the reader processes load it by
reference (ADR-008). No business rule: the shape of the eventstore-benchmarks suite's mixed
workload, where a write is one event of a fixed size.
"""

from __future__ import annotations

from typing import Sequence

from es_actors import Aggregate, Command, Event

EVENT_BYTES = 256  # the stored JSON payload of one Appended event
DATA = "x" * (EVENT_BYTES - len('{"data":""}'))


class Appended(Event):
    data: str


class Append(Command):
    data: str


class Stream(Aggregate[int]):
    """State: the number of events (the stream's version)."""

    aggregate_type = "Stream"
    commands = (Append,)
    events = (Appended,)

    @classmethod
    def initial_state(cls) -> int:
        return 0

    @classmethod
    def decide(cls, state: int, command: Command) -> Sequence[Event]:
        assert isinstance(command, Append)
        return [Appended(data=command.data)]

    @classmethod
    def evolve(cls, state: int, event: Event) -> int:
        return state + 1
