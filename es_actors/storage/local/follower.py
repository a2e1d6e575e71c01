"""Follow one partition's log from a position, without owning it: the read side's tail -f.

Projectors and catch-up subscriptions call :meth:`LogFollower.poll` in a loop. Each poll
returns the next contiguous run of durable events after the last one returned (or None):

- events already sealed come as a *sealed batch*: the segment files and the position
  range, so DuckDB can scan them itself (only the columns a query uses) or pyarrow can
  read them;
- events still in the write-ahead tail come as an Arrow table, read incrementally (each
  tail file from the byte offset where the last poll stopped).

A read that races the owner (a tail file sealed and deleted, a compaction swap) is tried
again and finds the events in their new place: never a gap, never twice, and None means
nothing newer is durable (not "the files moved").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from es_actors.errors import StoreCorrupted
from es_actors.codecs.rows import ARROW_SCHEMA, COL, rows_to_table
from es_actors.storage.consistent import DEFAULT_ATTEMPTS, Moved, read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import FILE_NAME as LOST_FILE
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.local.log_place import require_held
from es_actors.storage.local.range_reads import segment_range
from es_actors.storage.local.segments import Segment, list_segments, parse_segment_name, resolve_current, verify_segment
from es_actors.storage.local.tail_cursor import TailFileCursor, TailFileReplaced
from es_actors.storage.local.wal import list_tail_files
from es_actors.storage.local.durable_mark import DurableMark

_NO_LOSS = LostRanges()


@dataclass
class Batch:
    """Events ``first..last`` of one partition, either as sealed files or as a table."""

    partition: int
    first: int
    last: int
    files: list[str] = field(default_factory=list)  # sealed: read with a position filter
    table: pa.Table | None = None  # from the tail: exactly these rows

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def from_tail(self) -> bool:
        """Rows read from the write-ahead tail (a live batch: small, already in memory)."""
        return self.table is not None

    @storage_boundary("reading a batch of sealed events")
    def to_table(self, columns: list[str] | None = None) -> pa.Table:
        """The batch's rows as Arrow, in position order (all columns unless given)."""
        if self.table is not None:
            return self.table if columns is None else self.table.select(columns)
        parts = [segment_range(_segment(f), self.first, self.last, columns) for f in self.files]  # overlapping row groups only
        return pa.concat_tables(parts) if parts else ARROW_SCHEMA.empty_table().select(columns or ARROW_SCHEMA.names)


def _segment(path: str) -> Segment:
    seg = parse_segment_name(Path(path))
    if seg is None:
        raise StoreCorrupted(f"{path} is not a sealed segment's name")
    return seg


class _FollowedFile:
    """A tail file being followed: its cursor and the rows read but not returned yet."""

    __slots__ = ("cursor", "rows")

    def __init__(self, path: Path, first: int) -> None:
        self.cursor = TailFileCursor(path, first)
        self.rows: list[tuple[Any, ...]] = []


class LogFollower:
    def __init__(self, layout: StoreLayout, partition: int, after: int = 0) -> None:
        layout.require_local("projections and subscriptions")
        self.layout = layout
        self.partition = partition
        self.after = after  # the last position returned (the caller's checkpoint)
        self.head = after  # the newest durable position seen
        self._tails: dict[Path, _FollowedFile] = {}

    def seek(self, after: int) -> None:
        """Continue after ``after`` (e.g. the checkpoint, after a batch was not applied)."""
        if after < self.after:
            self._tails.clear()  # rows before our cursor were dropped: read the files again
        self.after = after

    @storage_boundary("following a partition")
    def poll(self, max_rows: int = 1_000_000, attempts: int = DEFAULT_ATTEMPTS) -> Batch | None:
        """The next batch, or None when nothing newer is durable. A read that races the owner
        (a seal or compaction moving files) is tried again at once: callers that stop at the
        first None (a subscription with follow=False) must not take a race for the end.
        Damage raises StoreCorrupted: a follower never skips what it cannot read."""
        return read_consistently(
            lambda: self._poll(max_rows), f"following partition {self.partition}", attempts,
            pause_s=lambda attempt: 0.001 * attempt,  # the owner moved files under us: look again at once
            give_up=self._gave_up,
        )

    @staticmethod
    def _gave_up(last: BaseException) -> Batch | None:
        if isinstance(last, Moved) and last.missing:  # every attempt: positions written but in no file
            raise StoreCorrupted(str(last))
        return None

    def _poll(self, max_rows: int) -> Batch | None:
        lost = LostRanges.load(self.layout.root) if (self.layout.root / LOST_FILE).exists() else _NO_LOSS
        self.after = lost.skip(self.partition, self.after)  # a recorded loss is passed knowingly
        tail_dir = self.layout.tail_dir(self.partition)
        durable = DurableMark.read(tail_dir)  # before listing: everything up to it is in the files we list
        tails = list_tail_files(tail_dir)
        gen = resolve_current(self.layout.log_dir(self.partition))
        segments = list_segments(gen, lost, self.partition) if gen is not None else []
        sealed_last = segments[-1].last if segments else 0
        if self.after < sealed_last:
            chosen, last = [], self.after
            for s in segments:
                if s.last <= self.after:
                    continue
                verify_segment(s)
                chosen.append(str(s.path))
                last = s.last
                if last - self.after >= max_rows:
                    break
            last = min(last, self.after + max_rows)
            self.head = max(self.head, sealed_last)
            batch = Batch(self.partition, self.after + 1, last, files=chosen)
            self.after = last
            return batch
        rows = self._tail_rows(tails, sealed_last, durable)
        if not rows:
            require_held(self.layout, self.partition, lost, durable, tails, self.after)
            return None
        if rows[0][COL["position"]] != self.after + 1:
            raise Moved("rows moved into a segment")  # a seal is moving these rows; the next read finds them in the segment
        rows = rows[:max_rows]
        for i, r in enumerate(rows):
            if r[COL["position"]] != self.after + 1 + i:
                rows = rows[:i]  # the next poll starts after a recorded loss, or finds the rest sealed
                break
        if not rows:
            return None
        last = rows[-1][COL["position"]]
        self.head = max(self.head, last)
        batch = Batch(self.partition, self.after + 1, last, table=rows_to_table(rows))
        self.after = last
        return batch

    def _tail_rows(self, tails: list[tuple[int, Path]], sealed_last: int, durable: int | None) -> list[tuple[Any, ...]]:
        """Durable unsealed rows after ``self.after``, reading each tail file only from where we
        stopped; frames past the writer's durable mark are left for a later poll."""
        live = {p for _f, p in tails}
        for p in list(self._tails):
            if p not in live:
                del self._tails[p]
        out: list[tuple[Any, ...]] = []
        for i, (first, path) in enumerate(tails):
            next_first = tails[i + 1][0] if i + 1 < len(tails) else None
            if next_first is not None and next_first <= self.after + 1:
                continue  # wholly before what we need
            cur = self._tails.setdefault(path, _FollowedFile(path, first))
            try:  # whole, checksummed frames only, up to the durable mark; frames wholly returned are not decoded
                cur.rows.extend(cur.cursor.advance(next_first is None, durable, skip_before=self.after + 1))
            except TailFileReplaced:
                self._tails.clear()  # rows read from the old file are not to be trusted
                raise
            # drop rows already returned, keep memory to what is still ahead
            keep_from = 0
            while keep_from < len(cur.rows) and cur.rows[keep_from][COL["position"]] <= self.after:
                keep_from += 1
            if keep_from:
                del cur.rows[:keep_from]
            out.extend(r for r in cur.rows if r[COL["position"]] > max(self.after, sealed_last))
        return out
