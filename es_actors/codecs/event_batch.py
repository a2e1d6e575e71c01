"""A table of stored rows read as :class:`RecordedEvent` s, a slice at a time, in bulk.

Catch-up subscriptions and Python read models turn millions of sealed rows into events, so
the per-row Python work is kept to building the event itself:

- the table is examined once (a window of it at a time): its (event_type, schema_version)
  pairs, each pair's rows and payload texts, and the columns every event carries, each
  converted to Python in one call;
- rows at a current version are validated one pair at a time in a single pydantic call over
  a JSON array; only older rows go through their upcaster chains one by one (so an
  unreadable event raises :class:`~es_actors.domain.upcasting.UnreadableEvent` naming it,
  when the slice holding it is read);
- the events of a slice are built by C loops (``map`` over ``zip``) when each row reads as
  one event, which is the rule; a filter or an upcaster that splits a row takes a Python loop.

Small slices rather than the whole table: a consumer that drops events as it goes lets them
die young, before Python's cyclic GC runs at all (its collections are triggered by how many
objects are alive beyond those freed; full collections, which walk every object of the
process, by how many survive into the old generation).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from itertools import repeat
from typing import Any, Collection

import pyarrow as pa
import pyarrow.compute as pc

from es_actors.codecs.rows import event_where
from es_actors.codecs.views import RecordedEvent
from es_actors.domain import DomainRegistry

_new = tuple.__new__


class _Columns:
    """A slice's Arrow columns, each turned into Python values only when first asked for
    (the audit columns an event reads on demand: ids, principal, recorded_at, metadata)."""

    __slots__ = ("table", "cache")

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.cache: dict[str, list[Any]] = {}

    def column(self, name: str) -> list[Any]:
        col = self.cache.get(name)
        if col is None:
            arr = self.table.column(name)
            col = self.cache[name] = (arr.cast(pa.int64()) if name == "recorded_at" else arr).to_pylist()
        return col

    def get(self, name: str, i: int) -> Any:
        return self.column(name)[i]


class _Pair:
    """The rows of one (event_type, schema_version) in the table: row numbers ascending."""

    __slots__ = ("event_type", "schema_version", "current", "skip", "rows", "texts")

    def __init__(self, event_type: str, schema_version: int, current: bool, skip: bool, rows: list[int],
                 texts: list[str]) -> None:
        self.event_type, self.schema_version, self.current, self.skip = event_type, schema_version, current, skip
        self.rows, self.texts = rows, texts


class EventBatch:
    """Stored rows (a table in the log's schema, row order kept) read as events by :meth:`events`.

    The table is converted to Python a window of ``window_rows`` at a time (all of it if not
    given): a large read costs the memory of its Arrow buffers plus one window's Python values.
    """

    def __init__(self, table: pa.Table, registry: DomainRegistry, event_types: Collection[str] | None = None,
                 window_rows: int | None = None) -> None:
        self.table = table
        self.registry = registry
        self.event_types = event_types
        self.num_rows = table.num_rows
        self.window_rows = window_rows or self.num_rows
        self._w0 = self._w1 = 0  # the rows converted: w0..w1-1
        self.pairs: list[_Pair] = []
        self.cols: list[list[Any]] = []

    def _convert(self, w0: int, w1: int) -> None:
        """The window's columns as Python lists and its (type, version) pairs (row numbers in the window)."""
        window = self.table.slice(w0, w1 - w0)
        n = window.num_rows
        self.cols = [window.column(c).to_pylist() for c in
                     ("partition", "position", "aggregate_type", "aggregate_id", "version", "schema_version")]
        self.pairs = []
        types, svs, payloads = window.column("event_type"), window.column("schema_version"), window.column("payload")
        found = window.select(["event_type", "schema_version"]).group_by(["event_type", "schema_version"]).aggregate([])
        for t, v in zip(found.column(0).to_pylist(), found.column(1).to_pylist()):
            current = self.registry.decoder.is_current(t, v)
            skip = current and self.event_types is not None and t not in self.event_types  # never decoded
            if len(found) == 1:
                rows, texts = list(range(n)), ([] if skip else payloads.to_pylist())
            else:
                idx = pc.indices_nonzero(pc.and_(pc.equal(types, t), pc.equal(svs, v)))
                rows, texts = idx.to_pylist(), ([] if skip else payloads.take(idx).to_pylist())
            self.pairs.append(_Pair(t, v, current, skip, rows, texts))
        self._w0, self._w1 = w0, w1

    def position(self, i: int) -> int:
        """The log position of row ``i``."""
        return self.table.column("position")[i].as_py()  # type: ignore[no-any-return]

    def events(self, start: int = 0, stop: int | None = None) -> tuple[list[RecordedEvent], bool]:
        """The events of rows ``start..stop-1`` in row order, and whether each row read as exactly
        one event (no row filtered out or split: each event has a position of its own)."""
        stop = self.num_rows if stop is None else min(stop, self.num_rows)
        m = stop - start
        if m <= 0:
            return [], True
        if start < self._w0 or stop > self._w1:
            self._convert(start, min(self.num_rows, max(stop, start + self.window_rows)))
        table_start, start, stop = start, start - self._w0, stop - self._w0  # rows in the window from here on
        decoded: list[Any] = [None] * m
        simple = True
        for pair in self.pairs:
            a, b = bisect_left(pair.rows, start), bisect_left(pair.rows, stop)
            if a == b:
                continue
            if pair.skip:
                simple = False
                continue
            rows, texts = pair.rows[a:b], pair.texts[a:b]
            if pair.current:
                events = self._validate(pair, rows, texts)
                if events is not None:
                    if b - a == m:
                        decoded = events
                    else:
                        deque(map(decoded.__setitem__, map(start.__rsub__, rows), events), 0)
                    continue
            for i, text in zip(rows, texts):
                evs = self.registry.decode(pair.event_type, pair.schema_version, text, self._where(i))
                if self.event_types is not None:
                    evs = [e for e in evs if e.event_type in self.event_types]
                if len(evs) == 1:
                    decoded[i - start] = evs[0]
                else:
                    decoded[i - start] = evs
                    simple = False
        src = _Columns(self.table.slice(table_start, m))
        parts, pos, atypes, aids, vers, svs = (c[start:stop] for c in self.cols)
        if simple:
            return list(map(_new, repeat(RecordedEvent, m), zip(parts, pos, atypes, aids, vers, decoded, svs,
                                                                repeat(src, m), range(m)))), True
        out: list[RecordedEvent] = []
        for i, d in enumerate(decoded):
            if d is None:
                continue
            for e in (d if type(d) is list else (d,)):
                out.append(_new(RecordedEvent, (parts[i], pos[i], atypes[i], aids[i], vers[i], e, svs[i], src, i)))
        return out, False

    def _validate(self, pair: _Pair, rows: list[int], texts: list[str]) -> list[Any] | None:
        """One pydantic call for rows of a current version; None if any fails (then they are
        decoded one at a time, which names the unreadable one)."""
        try:
            return self.registry.list_adapter(pair.event_type).validate_json("[" + ",".join(texts) + "]")  # type: ignore[no-any-return]
        except Exception:
            return None

    def _where(self, i: int) -> Any:
        """Names row ``i`` of the window in an error (built only if there is one)."""
        cols = self.cols
        return lambda: event_where(cols[0][i], cols[1][i], cols[2][i], cols[3][i], cols[4][i])
