"""A partition's durable head on the whole-object backend, from one look: no segment is read.

Projection status and lag need only where each partition's log ends. Following the log from
position 0 to learn that (as a follower would) would download every segment once per reader;
here one look (manifest + tail objects after it, which the follower reads anyway) says where
the durable rows end and when the last one was recorded.
"""

from __future__ import annotations

from es_actors.codecs.rows import COL
from es_actors.storage.api import BlobStore
from es_actors.storage.consistent import read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.objects.view import CommitCache, adopted_commits, look


class ObjectHeadWatch:
    """:class:`~es_actors.storage.api.HeadWatch` of one partition of a blob store."""

    def __init__(self, blobs: BlobStore, partition: int) -> None:
        self.blobs, self.partition = blobs, partition
        self.head = 0
        self.head_recorded_at_us: int | None = None
        self._cache = CommitCache()

    @storage_boundary("looking at a partition's head")
    def refresh(self) -> int:
        def read_once() -> tuple[int, int | None]:
            listing = look(self.blobs, self.partition, self._cache)
            commits = adopted_commits(listing, self.partition)
            self._cache.trim(listing.manifest.through_slot)
            if commits and commits[-1].rows:
                return commits[-1].last, int(commits[-1].rows[-1][COL["recorded_at"]])
            return listing.manifest.last_position, None

        head, recorded_at = read_consistently(read_once, f"looking at partition {self.partition}'s head")
        if head > self.head:
            self.head, self.head_recorded_at_us = head, recorded_at
        return self.head
