"""What the ``events`` relation of a query sees of a whole-object partition: its sealed segments
(by name, not read) and its durable tail rows after them, from one consistent look.

A query over an S3 store then scans the segments through pyarrow (only the columns and row
groups it needs, ADR-019) and the tail as Arrow rows, never a row twice or a partial commit:
the segments and the tail come from the same look (:func:`~.watch.take_view`), and replaced
segments stay readable for ``gc_grace_s`` after a compaction.
"""

from __future__ import annotations

import pyarrow as pa

from es_actors.codecs.rows import ARROW_SCHEMA, rows_to_table
from es_actors.storage.api import BlobStore
from es_actors.storage.consistent import read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.objects.records import SegmentRef
from es_actors.storage.objects.view import CommitCache
from es_actors.storage.objects.watch import take_view


@storage_boundary("looking at a partition for a query")
def sealed_and_tail(blobs: BlobStore, partition: int, cache: CommitCache | None = None) -> tuple[list[SegmentRef], pa.Table]:
    """(the current manifest's segments, the durable tail rows after them), from one look."""
    commits = cache if cache is not None else CommitCache()
    view = read_consistently(lambda: take_view(blobs, partition, commits), f"looking at partition {partition} for a query")
    tail = [r for c in view.commits for r in c.rows]  # adopted commits continue the manifest without a gap
    return list(view.manifest.segments), rows_to_table(tail) if tail else ARROW_SCHEMA.empty_table()
