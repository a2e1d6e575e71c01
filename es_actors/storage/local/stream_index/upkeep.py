"""The partition owner's upkeep of its stream index, run by the sealer thread (never the command path).

After each seal a run for the new segment, then merges; at start, after a compaction and after a
failure a reconcile (every current segment gets a valid run, invalid runs go), then merges. The
index is derived data: a failure is logged and retried after :attr:`IndexUpkeep.RETRY_S`, and never
fails a commit or a seal. Upkeep yields to sealing and to close (``should_stop``) and resumes later.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import pyarrow.parquet as pq

from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.config import StoreConfig
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.local.segments import Segment
from es_actors.storage.local.stream_index.writing import StreamIndexWriter

log = logging.getLogger(__name__)


class IndexUpkeep:
    """What the sealer does for the index, and whether a reconcile is due. The caller holds the
    partition's upkeep lock around :meth:`after_seal` and :meth:`reconcile`."""

    RETRY_S = 5.0

    def __init__(self, layout: StoreLayout, partition: int, config: StoreConfig) -> None:
        self.layout, self.partition, self.config = layout, partition, config
        self._writer: StreamIndexWriter | None = None  # made on first use, in the sealer thread (reads store.json)
        self.due = True  # a reconcile is due: at start, after a compaction, after a failure
        self.error: str | None = None
        self._retry_at = 0.0

    def ready(self) -> bool:
        """A reconcile is due and not waiting out a failure."""
        return self.due and time.monotonic() >= self._retry_at

    def wait_s(self) -> float | None:
        """How long the sealer may sleep before a reconcile is ready (None: until woken)."""
        return max(0.0, self._retry_at - time.monotonic()) if self.due else None

    def writer(self) -> StreamIndexWriter:
        if self._writer is None:
            desc = self.layout.read_descriptor()
            self._writer = StreamIndexWriter(self.layout, self.partition, desc.store_id if desc else "", self.config)
        return self._writer

    def after_seal(self, seg: Segment, should_stop: Callable[[], bool]) -> None:
        """A run for the segment just sealed, then merges (skipped while a reconcile is due: it
        covers this segment too)."""
        if self.due:
            return
        try:
            # From the segment just written (in the page cache; Parquet decodes without the GIL),
            # not from the sealer's Python rows: converting them would hold the GIL the command path needs.
            self.writer().add(seg, pq.read_table(seg.path, schema=ARROW_SCHEMA))
            self.writer().merge(should_stop)
        except Exception as exc:
            self._failed(exc)

    def reconcile(self, segments: list[Segment], lost: LostRanges, should_stop: Callable[[], bool]) -> None:
        """Reconcile with the current segments, then merge; stays due if cut short."""
        try:
            writer = self.writer()
            done = writer.reconcile(segments, lost, should_stop)
            if done:
                writer.merge(should_stop)
            self.due = not done or should_stop()
            if not self.due:
                self.error = None
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        log.error("partition %d: stream index upkeep failed, will retry: %s", self.partition, self.error)
        self.due = True
        self._retry_at = time.monotonic() + self.RETRY_S
