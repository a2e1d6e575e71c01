"""Test-only domains (importable by Ray workers, since they are plain modules on the path)."""

from __future__ import annotations

import time
from typing import Sequence

from pydantic import BaseModel

from es_actors import Aggregate, Command, DomainError, Event


class Tick(Command):
    delay_s: float = 0.0
    crash: bool = False  # makes decide raise like buggy user code would
    refuse: bool = False  # makes decide raise a DomainError that pickle cannot rebuild


class Ticked(Event):
    pass


class Refused(DomainError):
    """A user error with its own constructor: pickle cannot rebuild it from its message alone."""

    def __init__(self, limit: int, why: str) -> None:
        super().__init__(f"refused at {limit}: {why}")


class Count(BaseModel, frozen=True):
    n: int = 0


class SlowCounter(Aggregate[Count]):
    """Sleeps in decide: makes a partition slow on purpose, to show backpressure."""

    commands = (Tick,)
    events = (Ticked,)

    @classmethod
    def initial_state(cls) -> Count:
        return Count()

    @classmethod
    def decide(cls, state: Count, command: Command) -> Sequence[Event]:
        assert isinstance(command, Tick)
        time.sleep(command.delay_s)
        if command.refuse:
            raise Refused(3, "too many")
        if command.crash:
            raise ZeroDivisionError("a bug in decide")
        return [Ticked()]

    @classmethod
    def evolve(cls, state: Count, event: Event) -> Count:
        return Count(n=state.n + 1)


from examples.bank import BankAccount  # noqa: E402


class SnapshottedAccount(BankAccount):
    """The bank account with a live snapshot policy (same stored type name, same events)."""

    aggregate_type = "BankAccount"
    snapshot_every = 100
