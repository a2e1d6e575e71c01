"""Rows of stream-index slices already looked up and checked in this process, as Python tuples.

A read-only reader serving many reads (``Store.history`` per request) looks up the same
aggregates again and again; checking a slice (CRC of its blocks, ``validate``, the aggregate and
versions of each row) and converting it to tuples costs more than the rest of the read. A slice's
rows are a function of the run's bytes and the lookup's arguments, so they are kept under a key
holding both: the run's path and file identity (device, inode, size, mtime: a run rewritten or
damaged in place has another and is opened and checked again) and the aggregate and versions
asked for. Bounded by rows held (least recently used evicted); tuples are immutable, lists are
copied out.

Only small slices are kept (:data:`MAX_SLICE_ROWS`): converting a slice costs ~8 us of per-column
calls plus ~0.25 us a row, while evicting one from a full cache frees its rows' objects, long
out of the CPU's caches, at ~1 us a row (measured: with 17-row slices and a hit rate of ~12 %, a
20k-row cache cost ~27 us per read more than it saved). For a slice of a few rows, the fixed
part dominates and a hit saves most of a read's conversion.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

Row = tuple[Any, ...]
Key = tuple[Any, ...]

MAX_ROWS = 20_000  # ~0.5-2 KB a row (its tuple and strings): at most a few tens of MB per process
MAX_SLICE_ROWS = 4  # larger slices are converted per read (see above)

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
    if len(rows) > MAX_SLICE_ROWS:
        return  # converting it costs about what evicting it later would
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
