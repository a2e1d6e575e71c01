"""Values derived from a local file or directory, reused while a stat says it is unchanged.

Readers look at the same few paths on every read (a partition's tail directory, its segment
generation, its index directory, ``lost-ranges.json``); listing or parsing them each time costs
more than the read. Each of those caches keeps its value under the path's identity (inode, size,
mtime, ctime) and derives it again when any of them differs. Files there are replaced by rename
(new inode) and entries added or removed change a directory's mtime and ctime. One rule covers
the rest: a value derived within :data:`RACY_NS` of the path's last change is not kept, because a
change within the same clock tick would leave the times as they were ("racy" entries, as git's
index has them).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

#: A path changed within this long of a look may change again without moving its times.
RACY_NS = 200_000_000

Identity = tuple[int, int, int, int]


class UnchangedCache(Generic[T]):
    """Derived values by path, each kept with the identity of the path it was derived from."""

    def __init__(self, max_entries: int) -> None:
        self._entries: dict[str, tuple[Identity, T]] = {}
        self._max = max_entries

    def get(self, key: str, st: os.stat_result, derive: Callable[[], T]) -> T:
        """The value kept for ``key`` if ``st`` (a stat of it taken now) shows it unchanged, else
        ``derive()``, kept unless the path changed within :data:`RACY_NS`."""
        ident = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == ident:
            return hit[1]
        value = derive()
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
            if len(self._entries) > self._max:
                self._entries.clear()
            self._entries[key] = (ident, value)
        return value

    def clear(self) -> None:
        self._entries.clear()
