"""Domains for the snapshot and contract-check job tests (importable by Ray workers).

``Ledger`` is the code that writes the log. The other classes are later versions of the
same aggregate type reading what ``Ledger`` stored (``Entry`` v1 ``{amount}``):

- ``LedgerV2``: ``Entry`` v2 ``{cents, memo}`` with an upcaster from v1: reads everything;
- ``LedgerRenamed``: renamed ``amount`` -> ``cents`` without bumping the version or an
  upcaster: no stored ``Entry`` validates any more;
- ``LedgerV2Buggy``: like ``LedgerV2``, but its ``evolve`` assumes ``memo`` is set, which
  upcast events never have: ``evolve`` raises on them.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel

from es_actors import Aggregate, Command, Event
from es_actors.domain.upcasting import upcaster


class Book(BaseModel, frozen=True):
    total: int = 0
    entries: int = 0


class Post(Command):
    amount: int


# -- what the writing code stores ---------------------------------------------------------
class Entry(Event):
    amount: int


class Ledger(Aggregate[Book]):
    aggregate_type = "Ledger"
    commands = (Post,)
    events = (Entry,)

    @classmethod
    def initial_state(cls) -> Book:
        return Book()

    @classmethod
    def decide(cls, state: Book, command: Command) -> Sequence[Event]:
        assert isinstance(command, Post)
        return [Entry(amount=command.amount)]

    @classmethod
    def evolve(cls, state: Book, event: Event) -> Book:
        assert isinstance(event, Entry)
        return Book(total=state.total + event.amount, entries=state.entries + 1)


# -- a field renamed in place: the stored events no longer validate -----------------------
class EntryRenamed(Event):
    event_type = "Entry"
    cents: int


class LedgerRenamed(Ledger):
    aggregate_type = "Ledger"
    events = (EntryRenamed,)

    @classmethod
    def decide(cls, state: Book, command: Command) -> Sequence[Event]:
        assert isinstance(command, Post)
        return [EntryRenamed(cents=command.amount)]

    @classmethod
    def evolve(cls, state: Book, event: Event) -> Book:
        assert isinstance(event, EntryRenamed)
        return Book(total=state.total + event.cents, entries=state.entries + 1)


# -- done right: v2 with an upcaster ------------------------------------------------------
class EntryV2(Event):
    event_type = "Entry"
    schema_version = 2
    cents: int
    memo: str | None = None


@upcaster("Entry", from_version=1)
def _entry_v1(payload: dict) -> dict:
    return {"cents": payload["amount"] * 100}


class LedgerV2(Aggregate[Book]):
    aggregate_type = "Ledger"
    commands = (Post,)
    events = (EntryV2,)
    upcasters = (_entry_v1,)

    @classmethod
    def initial_state(cls) -> Book:
        return Book()

    @classmethod
    def decide(cls, state: Book, command: Command) -> Sequence[Event]:
        assert isinstance(command, Post)
        return [EntryV2(cents=command.amount * 100, memo="posted")]

    @classmethod
    def evolve(cls, state: Book, event: Event) -> Book:
        assert isinstance(event, EntryV2)
        return Book(total=state.total + event.cents, entries=state.entries + 1)


class LedgerV2Buggy(LedgerV2):
    aggregate_type = "Ledger"

    @classmethod
    def evolve(cls, state: Book, event: Event) -> Book:
        assert isinstance(event, EntryV2)
        return Book(total=state.total + event.cents + len(event.memo), entries=state.entries + 1)  # type: ignore[arg-type]
