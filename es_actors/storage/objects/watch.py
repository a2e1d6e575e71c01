"""One partition's current view for the readers of a process, taken at most every ``interval_s``.

A look at a partition of the whole-object backend (:func:`~.view.look`) is two LISTs and a
GET on S3 (~20-50 ms, and billed); a projection runner follows every partition with several
followers polling every ``projector_poll_s``. A :class:`PartitionWatch` lets them share one
look within ``StoreConfig.object_poll_s`` and one cache of the commits, manifests and
segments it reads (all immutable). A shared view is a consistent look that is at most that
old, so sharing changes only how soon a follower sees new rows, never which: no gap, no row
twice, no partial or voided commit. A follower never uses a look taken before it was made
(a subscription that stops at the first "nothing newer" still sees everything acknowledged
before it began).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from es_actors.storage.api import BlobStore
from es_actors.storage.consistent import read_consistently
from es_actors.storage.objects.records import Commit, Manifest
from es_actors.storage.objects.view import CommitCache, SegmentCache, adopted_commits, look


@dataclass(frozen=True)
class View:
    """What one consistent look found durable and visible: the manifest's segments, then the
    adopted row commits after it."""

    manifest: Manifest
    commits: tuple[Commit, ...]
    taken_at: float  # time.monotonic() when the look began: it shows at least what was durable then

    @property
    def head(self) -> int:
        """The newest durable position."""
        return self.commits[-1].last if self.commits else self.manifest.last_position


def take_view(blobs: BlobStore, partition: int, cache: CommitCache) -> View:
    """One look (raises Moved / FileNotFoundError if a seal or compaction raced it; damage raises
    StoreCorrupted)."""
    started = time.monotonic()
    listing = look(blobs, partition, cache)
    commits = tuple(c for c in adopted_commits(listing, partition) if c.rows)
    return View(listing.manifest, commits, started)


class PartitionWatch:
    """The current :class:`View` of one partition, looked at again when older than ``interval_s``
    (0: at every call), and the cache its readers share. Thread-safe: one look at a time."""

    def __init__(self, blobs: BlobStore, partition: int, interval_s: float = 0.0,
                 segments: SegmentCache | None = None) -> None:
        self.blobs, self.partition, self.interval_s = blobs, partition, interval_s
        self.cache = CommitCache(segments)
        self.looks = 0  # looks taken (each: LIST gens/, LIST tail/, GETs of what is new)
        self._view: View | None = None
        self._lock = threading.Lock()

    def view(self, not_before: float = 0.0, fresh: bool = False) -> View:
        """A view taken at or after ``not_before`` (monotonic) and less than ``interval_s`` ago; a
        new look if there is none, or if ``fresh`` (what the last one named has moved)."""
        with self._lock:
            current = self._view
            if (current is not None and not fresh and current.taken_at >= not_before
                    and time.monotonic() - current.taken_at < self.interval_s):
                return current
            new = read_consistently(lambda: take_view(self.blobs, self.partition, self.cache),
                                    f"reading partition {self.partition}")
            self.looks += 1
            self._view = new
            return new


__all__ = ["PartitionWatch", "View", "take_view"]
