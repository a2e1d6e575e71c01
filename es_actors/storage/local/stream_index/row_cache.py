"""Rows of stream-index slices already looked up and checked in this process, as Python tuples.

A read-only reader serving many reads (``Store.history`` per request) looks up the same
aggregates again and again; checking a slice (CRC of its blocks, ``validate``, the aggregate and
versions of each row) and converting it to tuples costs more than the rest of the read. A slice's
rows are a function of the run's bytes and the lookup's arguments, so they are kept under a key
holding both: the run's path and file identity (device, inode, size, mtime: a run rewritten or
damaged in place has another and is opened and checked again) and the aggregate and versions
asked for. Bounded by rows held (least recently used evicted); tuples are immutable, lists are
copied out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

Row = tuple[Any, ...]
Key = tuple[Any, ...]

MAX_ROWS = 20_000  # ~0.5-2 KB a row (its tuple and strings): at most a few tens of MB per process

_cache: OrderedDict[Key, list[Row]] = OrderedDict()
_held = 0
_lock = threading.Lock()


def get(key: Key) -> list[Row] | None:
    with _lock:
        rows = _cache.get(key)
        if rows is not None:
            _cache.move_to_end(key)
        return rows


def put(key: Key, rows: list[Row]) -> None:
    global _held
    if len(rows) > MAX_ROWS // 4:
        return  # a long aggregate's slice: not worth evicting everything else for
    with _lock:
        old = _cache.pop(key, None)
        _held -= len(old) if old is not None else 0
        _cache[key] = rows
        _held += len(rows)
        while _held > MAX_ROWS and _cache:
            _k, gone = _cache.popitem(last=False)
            _held -= len(gone)


def release(roots: set[str]) -> None:
    """Forget the slices of runs under any of ``roots`` (``Store.close``: its memory back now)."""
    global _held
    with _lock:
        for key in [k for k in _cache if any(str(k[0]).startswith(r + "/") for r in roots)]:
            _held -= len(_cache.pop(key))


def clear() -> None:
    """Forget every slice (tests; a process that wants its memory back)."""
    global _held
    with _lock:
        _cache.clear()
        _held = 0
