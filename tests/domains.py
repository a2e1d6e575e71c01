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


from es_actors.examples.bank import BankAccount  # noqa: E402


class SnapshottedAccount(BankAccount):
    """The bank account with a live snapshot policy (same stored type name, same events)."""

    aggregate_type = "BankAccount"
    snapshot_every = 100


# -- lifecycle (tests/test_lifecycle.py): the same stored aggregate under changed code ------------
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from es_actors.examples.bank import Account  # noqa: E402


class RevisedAccount(BankAccount):
    """SnapshottedAccount after evolve "changed meaning": state_version bumped, all else equal."""

    aggregate_type = "BankAccount"
    state_version = 2
    snapshot_every = 100


class RarelySnapshottedAccount(BankAccount):
    """state_version bumped and a live policy that never comes due in the tests: a stale
    snapshot must be replaced anyway (after the replay it forced)."""

    aggregate_type = "BankAccount"
    state_version = 3
    snapshot_every = 10_000


@dataclass(frozen=True)
class CountedState:
    """A different state type (one more field) over the same events."""

    account: Account = field(default_factory=Account)
    events: int = 0


class CountedAccount(BankAccount):
    aggregate_type = "BankAccount"
    snapshot_every = 100

    @classmethod
    def initial_state(cls) -> CountedState:  # type: ignore[override]
        return CountedState()

    @classmethod
    def decide(cls, state: CountedState, command: Command) -> Sequence[Event]:  # type: ignore[override]
        return BankAccount.decide(state.account, command)

    @classmethod
    def evolve(cls, state: CountedState, event: Event) -> CountedState:  # type: ignore[override]
        return CountedState(BankAccount.evolve(state.account, event), state.events + 1)


class Bump(Command):
    key: int


class Bumped(Event):
    key: int


class Tally(Aggregate[dict]):
    """State is a plain dict with int keys: JSON would give its keys back as strings."""

    commands = (Bump,)
    events = (Bumped,)
    snapshot_every = 5

    @classmethod
    def initial_state(cls) -> dict[Any, Any]:
        return {}

    @classmethod
    def decide(cls, state: dict[Any, Any], command: Command) -> Sequence[Event]:
        assert isinstance(command, Bump)
        return [Bumped(key=command.key)]

    @classmethod
    def evolve(cls, state: dict[Any, Any], event: Event) -> dict[Any, Any]:
        assert isinstance(event, Bumped)
        return {**state, event.key: state.get(event.key, 0) + 1}


class Sync(Command):
    break_next_sync: bool = False  # fault injection from inside the actor process: the next fdatasync fails


class Synced(Event):
    pass


class SyncProbe(Aggregate[Count]):
    """Lets a test make the partition actor's next fdatasync fail (EIO), from inside its process."""

    commands = (Sync,)
    events = (Synced,)

    @classmethod
    def initial_state(cls) -> Count:
        return Count()

    @classmethod
    def decide(cls, state: Count, command: Sync) -> Sequence[Event]:
        if command.break_next_sync:
            import errno
            import os

            from es_actors.storage.local import wal

            def fail_once(fd: int) -> None:
                wal._fdatasync = os.fdatasync
                raise OSError(errno.EIO, "Input/output error")

            wal._fdatasync = fail_once
        return [Synced()]

    @classmethod
    def evolve(cls, state: Count, event: Event) -> Count:
        return Count(n=state.n + 1)
