"""The files this process's readers keep open across reads, within one budget.

A :class:`~es_actors.storage.local.tail_key_index.TailKeyIndex` keeps its partition's tail files
and key files open between reads (no open per read). Per partition that is a few files; per
process, with many partitions or stores read, it would be thousands: past the process's limit
every open fails (EMFILE), the reads of every store with it, and files a seal removed stay on disk
while held. So the holders report how many files they keep after each read, and past
:data:`MAX_KEPT` the least recently read ones close theirs (their records stay: a later read opens
the files again and checks they are the ones it had).
"""

from __future__ import annotations

import resource
import threading
from collections import OrderedDict
from typing import Protocol

#: Files kept open across reads by all holders of this process together, at most (but for the
#: holder just read, which keeps its own), and never more than a quarter of the process's limit.
MAX_KEPT = 256
MIN_KEPT = 16  # (below this many no limit is looked at)


class Holder(Protocol):
    lock: threading.Lock

    def close_files(self) -> None:
        """Close the files kept open (called with ``lock`` held)."""


_held: OrderedDict[int, tuple[Holder, int]] = OrderedDict()  # id -> (holder, files), least recently read first
_lock = threading.Lock()
_total = 0


def note(holder: Holder, kept: int) -> None:
    """``holder`` (its own lock held) keeps ``kept`` files open now: past :data:`MAX_KEPT`, the least
    recently read other holders close theirs (those busy in a read are passed over)."""
    global _total
    key = id(holder)
    with _lock:
        before = _held.pop(key, (holder, 0))[1]
        _total += kept - before
        if kept:
            _held[key] = (holder, kept)
        if _total <= MIN_KEPT:
            return
        budget = max(MIN_KEPT, min(MAX_KEPT, _quarter_of_limit()))
        for other_key in list(_held):
            if _total <= budget:
                break
            other, n = _held[other_key]
            if other is holder or not other.lock.acquire(blocking=False):
                continue
            try:
                other.close_files()
            finally:
                other.lock.release()
            del _held[other_key]
            _total -= n


_quarter: int | None = None


def _quarter_of_limit() -> int:
    """A quarter of the process's open-file limit, looked up once (reads call :func:`note`)."""
    global _quarter
    if _quarter is None:
        _quarter = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4
    return _quarter


def forget(holder: Holder) -> None:
    """``holder`` closed its files (a reset, a release)."""
    global _total
    with _lock:
        _total -= _held.pop(id(holder), (holder, 0))[1]


def kept() -> int:
    """Files kept open by all holders (tests, stats)."""
    with _lock:
        return _total
