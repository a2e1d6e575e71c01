"""The files this process's readers keep open across reads, within one budget.

A :class:`~es_actors.storage.local.tail_key_index.TailKeyIndex` keeps its partition's tail files
and key files open between reads (no open per read). Per partition that is a few files; per
process, with many partitions or stores read, it would be thousands: past the process's limit
every open fails (EMFILE), the reads of every store with it, and files a seal removed stay on disk
while held. So the holders report how many files they keep after each read; past :data:`MAX_KEPT`
the least recently read ones close theirs, and so do those not read for :data:`IDLE_S` (their
records stay: a later read opens the files again and checks they are the ones it had).
"""

from __future__ import annotations

import resource
import threading
import time
from collections import OrderedDict
from typing import Protocol

#: Files kept open across reads by all holders of this process together, at most (but for the
#: holder just read, which keeps its own), and never more than a quarter of the process's limit
#: (no floor under it: in a process allowed 20 files, 16 kept made its reads fail with EMFILE).
MAX_KEPT = 256


class Holder(Protocol):
    lock: threading.Lock

    def close_files(self) -> None:
        """Close the files kept open (called with ``lock`` held)."""


#: A holder not read for this long closes its files at the next read of any other (a sealed tail
#: file a process no longer reads would otherwise keep its disk space until ``Store.close``).
IDLE_S = 30.0

_held: OrderedDict[int, tuple[Holder, int, float]] = OrderedDict()  # id -> (holder, files, last read), oldest first
_lock = threading.Lock()
_total = 0


def note(holder: Holder, kept: int) -> None:
    """``holder`` (its own lock held) keeps ``kept`` files open now. The least recently read other
    holders close theirs while the process keeps more than :data:`MAX_KEPT`, and those not read for
    :data:`IDLE_S` do (holders busy in a read are passed over)."""
    global _total
    key, now = id(holder), time.monotonic()
    with _lock:
        before = _held.pop(key, (holder, 0, now))[1]
        _total += kept - before
        if kept:
            _held[key] = (holder, kept, now)
        budget = min(MAX_KEPT, _quarter_of_limit())
        oldest = next(iter(_held.values()), None)
        if oldest is None or (_total <= budget and now - oldest[2] < IDLE_S):
            return  # (the usual read: nothing to close, nothing copied)
        for other_key, (other, n, last_read) in list(_held.items()):  # oldest first: stops at the first kept
            if _total <= budget and now - last_read < IDLE_S:
                break
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
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        _quarter = MAX_KEPT if soft == resource.RLIM_INFINITY or soft < 0 else soft // 4  # (unlimited: -1)
    return _quarter


def forget(holder: Holder) -> None:
    """``holder`` closed its files (a reset, a release)."""
    global _total
    with _lock:
        _total -= _held.pop(id(holder), (holder, 0, 0.0))[1]


def kept() -> int:
    """Files kept open by all holders (tests, stats)."""
    with _lock:
        return _total
