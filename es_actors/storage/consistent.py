"""The one "consistent read, retry" loop of every storage reader.

A reader that does not own a partition races its owner: between reading the durable mark
(or a generation pointer), listing files and reading them, a seal may move rows from the
tail into a segment and a compaction may swap generations and collect old files. Each read
attempt therefore either returns a consistent result or says that something moved
(:class:`Moved`, or a ``FileNotFoundError`` from a file collected under it), and this loop
tries again. Every backend's readers, followers and the owner's own snapshot reads use it,
so the rule (how often, how long to wait, what error when it never settles) is written once.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from es_actors.errors import StoreCorrupted

T = TypeVar("T")
DEFAULT_ATTEMPTS = 20


class Moved(Exception):
    """One read attempt raced the owner (files moved or positions not yet where they will be):
    look again. ``missing`` marks positions that were written but are in no listed file: a
    race if it passes, damage (files gone) if it never does."""

    def __init__(self, why: str, missing: bool = False) -> None:
        super().__init__(why)
        self.missing = missing


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"a file vanished while reading ({exc.filename})"
    return str(exc)


def read_consistently(
    read_once: Callable[[], T],
    what: str,
    attempts: int = DEFAULT_ATTEMPTS,
    pause_s: Callable[[int], float] = lambda attempt: 0.01,
    give_up: Callable[[BaseException], T] | None = None,
) -> T:
    """``read_once()`` until it returns without :class:`Moved` / ``FileNotFoundError``.

    After ``attempts`` tries, ``give_up(last exception)`` decides (e.g. a follower answers "nothing
    new" when the files kept moving); without it, :class:`StoreCorrupted` names ``what`` and why.
    """
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return read_once()
        except (Moved, FileNotFoundError) as exc:
            last = exc
        time.sleep(pause_s(attempt))
    assert last is not None or attempts <= 0
    if give_up is not None and last is not None:
        return give_up(last)
    why = _why(last) if last is not None else "no attempt was made"
    raise StoreCorrupted(f"{what}: no consistent read after {attempts} attempts: {why}")
