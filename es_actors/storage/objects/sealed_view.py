"""What the ``events`` relation of a query sees of a whole-object partition: its sealed segments
(by name, not read) and its durable tail rows after them, from one consistent look.

A query over an S3 store then scans the segments through pyarrow (only the columns and row
groups it needs, ADR-019) and the tail as Arrow rows, never a row twice or a partial commit:
the segments and the tail come from the same look, and replaced segments stay readable for
``gc_grace_s`` after a compaction.
"""

from __future__ import annotations

import pyarrow as pa

from es_actors.codecs.rows import ARROW_SCHEMA, COL, rows_to_table
from es_actors.storage.api import BlobStore
from es_actors.storage.consistent import read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.objects.records import SegmentRef
from es_actors.storage.objects.view import CommitCache, adopted_commits, look, rows_after


@storage_boundary("looking at a partition for a query")
def sealed_and_tail(blobs: BlobStore, partition: int, cache: CommitCache | None = None) -> tuple[list[SegmentRef], pa.Table]:
    """(the current manifest's segments, the durable tail rows after them), from one look."""
    cache = cache or CommitCache()
    pos = COL["position"]

    def read_once() -> tuple[list[SegmentRef], pa.Table]:
        listing = look(blobs, partition, cache)
        sealed_last = listing.manifest.last_position
        tail = [r for r in rows_after(adopted_commits(listing, partition)) if r[pos] > sealed_last]
        return list(listing.manifest.segments), rows_to_table(tail) if tail else ARROW_SCHEMA.empty_table()

    return read_consistently(read_once, f"looking at partition {partition} for a query")
