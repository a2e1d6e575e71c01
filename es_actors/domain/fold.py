"""The one fold: replay events onto a state. Every read path (hydration in the partition,
bulk hydration, jobs' replay, time travel) goes through it, so they cannot disagree on what
a stream means."""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

from es_actors.domain.model import Aggregate, Event

S = TypeVar("S")
_INITIAL: Any = object()


def fold(aggregate: type[Aggregate[Any]], events: Iterable[Event], state: Any = _INITIAL) -> Any:
    """``evolve`` each event in order onto ``state`` (the aggregate's initial state if not given;
    a given ``None`` is a state like any other, e.g. a snapshot's)."""
    evolve = aggregate.evolve
    s = aggregate.initial_state() if state is _INITIAL else state
    for e in events:
        s = evolve(s, e)
    return s
