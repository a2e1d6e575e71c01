"""Time travel: an aggregate as it was at a version or at a moment, folded from its durable
history with the one fold every read path uses (:func:`es_actors.domain.fold`).

No actor is involved, so it works on a read-only store, and without Ray. ``state_at(version=v)``
reads versions 1..v only; ``state_at(as_of=t)`` streams the history page by page and stops at
the first event recorded after ``t``."""

from __future__ import annotations

from datetime import datetime
from itertools import takewhile
from typing import Any, Iterable, Iterator

from es_actors.codecs.views import RecordedEvent
from es_actors.domain import Aggregate, fold
from es_actors.errors import EsActorsError


def check_point_in_time(version: int | None, as_of: datetime | None) -> None:
    """Exactly one of ``version`` and ``as_of``, and a moment with its time zone (recorded_at is UTC)."""
    if (version is None) == (as_of is None):
        raise EsActorsError("give exactly one of version= or as_of=")
    if as_of is not None and as_of.tzinfo is None:
        raise EsActorsError("as_of must be timezone-aware (recorded_at is UTC)")


def fold_history_until(
    aggregate: type[Aggregate[Any]],
    history: Iterable[RecordedEvent],
    *,
    version: int | None = None,
    as_of: datetime | None = None,
    name: str = "",
) -> tuple[int, Any]:
    """(version, state) after the events of ``history`` (oldest first) up to ``version``, or
    recorded up to ``as_of``; EsActorsError naming ``name`` if the aggregate never reached ``version``.
    ``history`` may be a stream (:meth:`Store.iter_history`): it is folded as it comes and read no
    further than the first event after the point asked for."""
    check_point_in_time(version, as_of)
    if version is not None:
        upto = version
        prefix: Iterable[RecordedEvent] = takewhile(lambda e: e.version <= upto, history)
    else:
        moment = as_of
        prefix = takewhile(lambda e: e.recorded_at <= moment, history)  # type: ignore[operator]
    at = 0

    def counted(events: Iterable[RecordedEvent]) -> Iterator[Any]:
        nonlocal at
        for e in events:
            at = e.version
            yield e.event

    state = fold(aggregate, counted(prefix))
    if version is not None and at < version:
        raise EsActorsError(f"{name} has no version {version}; its last is {at}")
    return at, state
